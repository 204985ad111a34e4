"""bf16 vs 8-bit vs NF4 at LLaVA-1.5-7B's shapes on a GPU: notebook 09's comparison and speed.

    python benchmarks/device_quant_7b.py --out results.json [--T 256] [--images 4]

Random weights (CLIP ViT-L/14 at 336 px, 576 image tokens, 32 decoder layers, d = 4096,
vocabulary 32 064), saved once and loaded back through ``load_model(quantization=...)``
as a user would load LLaVA-1.5-7B. For each precision: trace() / plain greedy generate()
at T tokens (interleaved, best of N), and on the same testbed scenes (AMBER layout) what
notebook 09 measures against bf16: generated-token agreement, the per-layer lens KL on
bf16's continuation, the correlation of the adjacent-layer JS curves, the critical and
mutation layers, and the model's memory. The figures are written to ``--out`` after each
precision. Random weights have no object words, so CHAIR and Cover are not measured here.
Needs a CUDA GPU and bitsandbytes (``--tiny``: a dry run of a tiny shape on the CPU).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from device_7b import PROMPT, make, timed  # noqa: E402
from run import picture, plain_generate  # noqa: E402

from lvlm_kit import load_model, trace  # noqa: E402
from lvlm_kit.compare import compare, run  # noqa: E402
from lvlm_kit.data import export_amber, read_amber  # noqa: E402
from lvlm_kit.testbed.model import LlavaShape  # noqa: E402

TINY = LlavaShape(
    image_size=64,
    patch_size=16,
    vision_hidden=64,
    vision_layers=1,
    vision_heads=4,
    hidden=128,
    layers=4,
    heads=4,
    kv_heads=4,
    intermediate=256,
    max_positions=512,
)
VARIANTS = (None, "nf4", "8bit")  # reference first; 8-bit last (the slowest)
REPEATS = {None: 3, "nf4": 2, "8bit": 1}


def speed(lm, T: int, repeat: int) -> dict:
    """Best-of-``repeat`` seconds of plain generate and trace, interleaved after a warm-up."""
    image = picture(lm)
    gen = lambda: plain_generate(lm, T, hidden_states=False)  # noqa: E731
    tr = lambda: trace(lm, image, PROMPT, T)  # noqa: E731
    plain_generate(lm, 8, hidden_states=False), trace(lm, image, PROMPT, 8)
    times = {"generate": [], "trace": []}
    for _ in range(repeat):
        times["generate"].append(timed(gen))
        times["trace"].append(timed(tr))
    g, t = min(times["generate"]), min(times["trace"])
    return {
        "T": T,
        "generate_s": g,
        "trace_s": t,
        "ratio": t / g,
        "all": times,
        "ms_per_token_generate": 1e3 * g / T,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--T", type=int, default=256, help="tokens for the speed ratio")
    parser.add_argument("--compare-T", type=int, default=64, help="tokens per compared image")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--tiny", action="store_true", help="a tiny shape on the CPU (a dry run)")
    args = parser.parse_args(argv)
    gpu = torch.cuda.is_available()
    out = Path(args.out)
    tmp = Path(tempfile.mkdtemp())
    start = time.perf_counter()
    lm = make(TINY, 512) if args.tiny else make()
    lm.model.save_pretrained(tmp / "model")
    lm.processor.save_pretrained(tmp / "model")
    del lm
    gc.collect(), torch.cuda.empty_cache()
    amber = read_amber(export_amber(tmp / "amber", n_images=args.images))
    device = torch.cuda.get_device_name() if gpu else "cpu"
    results: dict = {
        "device": device,
        "torch": torch.__version__,
        "images": args.images,
        "compare_T": args.compare_T,
        "variants": {},
        "saved_s": time.perf_counter() - start,
    }
    print(f"random 7B-shape LLaVA saved in {results['saved_s']:.0f}s", flush=True)
    models, runs = {}, {}
    for variant in VARIANTS:
        name = variant or "bf16"
        t0 = time.perf_counter()
        dtype = "bfloat16" if gpu else "float32"  # bitsandbytes computes in float32 on a CPU
        lm = load_model(tmp / "model", quantization=variant, dtype=dtype)
        lm.model.generation_config.eos_token_id = None  # always exactly T tokens
        if gpu:
            torch.cuda.reset_peak_memory_stats()
        r: dict = {"load_s": time.perf_counter() - t0}
        r["speed"] = speed(lm, args.T, REPEATS[variant])
        r["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 2**30 if gpu else None
        runs[name] = run(lm, amber, PROMPT, args.compare_T, name=name)
        models[name] = lm
        st = runs[name].stages
        r.update(
            memory_gb=runs[name].memory_bytes / 2**30,
            critical_layer=st.critical_layer,
            mutation_layers=st.mutation_layers,
            js_curve=st.js_curve,
        )
        if variant is not None:
            c = compare(models["bf16"], runs["bf16"], lm, runs[name], amber, PROMPT)
            r.update(
                token_agreement=c.token_agreement.tolist(),
                js_correlation=c.js_correlation.tolist(),
                lens_kl_per_layer=c.lens_kl.mean(0).tolist(),
                lens_kl_max=float(c.lens_kl.mean(0).max()),
            )
        results["variants"][name] = r
        out.write_text(json.dumps(results, indent=1))
        s = r["speed"]
        print(
            f"{name}: load {r['load_s']:.0f}s, memory {r['memory_gb']:.1f} GB, "
            f"generate {s['generate_s']:.2f}s ({s['ms_per_token_generate']:.1f} ms/token), "
            f"trace {s['trace_s']:.2f}s, trace/generate {s['ratio']:.3f}x; critical layer "
            f"{st.critical_layer}, mutation layers {st.mutation_layers}",
            flush=True,
        )
        if variant is not None:
            print(
                f"   vs bf16: token agreement {np.mean(r['token_agreement']):.2f}, JS-curve r "
                f"{np.nanmean(r['js_correlation']):.3f}, lens KL max over layers "
                f"{r['lens_kl_max']:.4f} nats",
                flush=True,
            )
    results["total_s"] = time.perf_counter() - start
    out.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
