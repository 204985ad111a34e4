"""Speed and memory of the kit, printed as ratios measured side by side in one run.

    python benchmarks/run.py            # default sizes (a few minutes on 2 CPU cores)
    python benchmarks/run.py --quick    # tiny sizes, seconds (used by the test suite)

Benchmarks (random-weight LLaVA-architecture models built from configs, CPU float32):
  a. trace() vs plain greedy generate(output_hidden_states=True), same input and length;
  b. trace() vs the naive lens (every layer's logits kept, full softmax [K, L+1, V]):
     time and peak memory (each in a fresh subprocess, peak RSS above the model's);
  c. skip_layers speed-up for k skipped layers vs the ideal L / (L - k);
  d. trace() time scaling with generated length T and vocabulary V.
Goals: (a) <= 1.10x, (b) peak extra memory << naive, (c) >= 0.9 x ideal.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np
import torch

from lvlm_kit import LoadedModel, resolve_anatomy, trace
from lvlm_kit.inputs import prepare_inputs
from lvlm_kit.lens import Lens, ResidualRecorder
from lvlm_kit.skipping import skip_layers
from lvlm_kit.testbed.model import LlavaShape, build_model, build_processor
from lvlm_kit.testbed.tokenizer import build_word_tokenizer
from lvlm_kit.trace import greedy_config

PROMPT = "describe this image."


def make(vocab: int, layers: int, hidden: int, image: int = 64) -> LoadedModel:
    tok = build_word_tokenizer([f"w{i}" for i in range(vocab)] + ["describe", "this", "image"])
    shape = LlavaShape(image_size=image, patch_size=8, vision_hidden=64, vision_layers=2,
                       vision_heads=4, hidden=hidden, layers=layers, heads=8, kv_heads=8,
                       intermediate=int(hidden * 2.75), max_positions=1024)  # fmt: skip
    model = build_model(shape, tok)
    model.generation_config.eos_token_id = None  # always generate exactly T tokens
    return LoadedModel(model, build_processor(shape, tok), resolve_anatomy(model), "bench")


def picture(size: int = 64) -> np.ndarray:
    return (np.random.RandomState(0).rand(size, size, 3) * 255).astype(np.uint8)


def best_of(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def plain_generate(lm: LoadedModel, T: int, hidden_states: bool = True):
    inputs, _ = prepare_inputs(lm, picture(), PROMPT)
    cfg = greedy_config(lm.model, T)
    cfg.output_hidden_states = cfg.return_dict_in_generate = hidden_states
    with torch.inference_mode():
        return lm.model.generate(**inputs, generation_config=cfg)


def naive_lens(lm: LoadedModel, T: int) -> torch.Tensor:
    """Every layer's full distribution kept: [K, L+1, V] float32."""
    inputs, _ = prepare_inputs(lm, picture(), PROMPT)
    lens = Lens(lm.anatomy)
    with ResidualRecorder(lm.anatomy) as rec, torch.inference_mode():
        lm.model.generate(**inputs, generation_config=greedy_config(lm.model, T))
    return torch.softmax(lens.logits(rec.stacked()), -1)


def peak_mb(kind: str, size: dict) -> float:
    """Peak RSS (MB) of a fresh process running one method, minus its model-only peak."""
    code = (
        "import sys, json, resource; sys.path.insert(0, 'benchmarks'); import run; "
        f"s = json.loads({json.dumps(json.dumps(size))}); lm = run.make(s['V'], s['L'], s['d']); "
        "run.plain_generate(lm, 1, False); "
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
        f"(run.trace_once if {kind!r} == 'trace' else run.naive_lens)(lm, s['T']); "
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=900
    )
    return float(out.stdout.strip().splitlines()[-1])


def trace_once(lm: LoadedModel, T: int):
    return trace(lm, picture(), PROMPT, T, top_k=10)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(2)
    if args.quick:
        size, repeat, Ts, Vs, ks = dict(V=2000, L=8, d=64, T=8), 1, (4, 8), (500, 2000), (2,)
    else:
        size, repeat, Ts, Vs, ks = (
            dict(V=32000, L=8, d=512, T=32),
            3,
            (16, 32, 64),
            (8000, 32000),
            (2, 4),
        )
    lm = make(size["V"], size["L"], size["d"])
    T, L = size["T"], size["L"]
    results: dict = {"size": size}

    t_plain = best_of(lambda: plain_generate(lm, T), repeat)
    t_trace = best_of(lambda: trace_once(lm, T), repeat)
    results["a_trace_vs_generate"] = t_trace / t_plain
    print(f"a. trace / plain generate(hidden states)   {t_trace / t_plain:5.2f}x  "
          f"({t_trace:.2f}s vs {t_plain:.2f}s; goal <= 1.10x)")  # fmt: skip

    t_naive = best_of(lambda: naive_lens(lm, T), repeat)
    m_trace, m_naive = peak_mb("trace", size), peak_mb("naive", size)
    results["b_time_trace_vs_naive"] = t_trace / t_naive
    results["b_peak_mb"] = {"trace": m_trace, "naive": m_naive}
    print(f"b. trace / naive lens: time {t_trace / t_naive:5.2f}x; peak extra memory "
          f"{m_trace:.0f} MB vs {m_naive:.0f} MB (naive keeps [K, L+1, V] = "
          f"{T * (L + 1) * size['V'] * 4 / 2**20:.0f} MB)")  # fmt: skip

    base = best_of(lambda: plain_generate(lm, T, False), repeat)
    results["c_skip"] = {}
    for k in ks:
        with skip_layers(lm.anatomy, list(range(L // 2 - k // 2, L // 2 - k // 2 + k))):
            t_k = best_of(lambda: plain_generate(lm, T, False), repeat)
        ideal = L / (L - k)
        results["c_skip"][k] = {"speedup": base / t_k, "ideal": ideal, "ratio": base / t_k / ideal}
        print(f"c. skip {k} of {L} layers: speed-up {base / t_k:4.2f}x vs ideal {ideal:4.2f}x "
              f"= {base / t_k / ideal:4.2f} of ideal (goal >= 0.9; vision tower, lm_head and "
              "prefill are not skipped)")  # fmt: skip

    results["d_scaling_T"] = {t: best_of(lambda t=t: trace_once(lm, t), repeat) for t in Ts}
    print("d. trace time vs T: " + ", ".join(
        f"T={t}: {s:.2f}s" for t, s in results["d_scaling_T"].items()))  # fmt: skip
    results["d_scaling_V"] = {}
    for v in Vs:
        lm_v = make(v, L, size["d"])
        t_v = best_of(lambda lm_v=lm_v: trace_once(lm_v, T), repeat)
        results["d_scaling_V"][v] = t_v / best_of(lambda lm_v=lm_v: plain_generate(lm_v, T), repeat)
    print("d. trace / generate vs V: " + ", ".join(
        f"V={v}: {r:.2f}x" for v, r in results["d_scaling_V"].items()))  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
