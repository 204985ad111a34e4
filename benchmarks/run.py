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
import gc
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import torch

from lvlm_kit import LoadedModel, trace
from lvlm_kit.anatomy import resolve_anatomy
from lvlm_kit.generation import greedy_config
from lvlm_kit.inputs import prepare_inputs
from lvlm_kit.lens import Lens
from lvlm_kit.surgery import ResidualRecorder, skip_layers
from lvlm_kit.testbed.model import LlavaShape, build_model, llava_processor
from lvlm_kit.testbed.tokenizer import build_word_tokenizer

PROMPT = "describe this image."


def make(vocab: int, layers: int, hidden: int, image: int = 64) -> LoadedModel:
    tok = build_word_tokenizer([f"w{i}" for i in range(vocab)] + ["describe", "this", "image"])
    shape = LlavaShape(
        image_size=image,
        patch_size=8,
        vision_hidden=64,
        vision_layers=2,
        vision_heads=4,
        hidden=hidden,
        layers=layers,
        heads=8,
        kv_heads=8,
        intermediate=int(hidden * 2.75),
        max_positions=2048,
    )
    model = build_model(shape, tok)
    model.generation_config.eos_token_id = None  # always generate exactly T tokens
    return LoadedModel(model, llava_processor(shape, tok), resolve_anatomy(model), "bench")


def picture(lm: LoadedModel) -> np.ndarray:
    size = lm.model.config.vision_config.image_size
    return (np.random.RandomState(0).rand(size, size, 3) * 255).astype(np.uint8)


def rounds(*fns, repeat: int) -> list[list[float]]:
    """Wall times of each function over ``repeat`` rounds, run interleaved (a, b, a, b, ...)
    after a warm-up, so that drifts of the machine's speed hit all of them alike."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, ts in zip(fns, times):
            start = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - start)
    return times


def best_of(*fns, repeat: int) -> list[float]:
    """Best wall time of each function over interleaved :func:`rounds`."""
    return [min(ts) for ts in rounds(*fns, repeat=repeat)]


def plain_generate(lm: LoadedModel, T: int, hidden_states: bool = True):
    inputs, _ = prepare_inputs(lm, picture(lm), PROMPT)
    cfg = greedy_config(lm.model, T)
    cfg.output_hidden_states = cfg.return_dict_in_generate = hidden_states
    with torch.inference_mode():
        return lm.model.generate(**inputs, generation_config=cfg)


def naive_lens(lm: LoadedModel, T: int) -> torch.Tensor:
    """Every layer's full distribution kept: [K, L+1, V] float32."""
    inputs, _ = prepare_inputs(lm, picture(lm), PROMPT)
    lens = Lens(lm.anatomy)
    with ResidualRecorder(lm.anatomy) as rec, torch.inference_mode():
        lm.model.generate(**inputs, generation_config=greedy_config(lm.model, T))
    return torch.softmax(lens.logits(rec.stacked()), -1)


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1)) / 1024


def peak_extra_mb(fn) -> float:
    """Peak resident memory (MB) that ``fn()`` adds on top of what is resident before it.

    Linux only: resets the peak (``/proc/self/clear_refs``) and reads ``VmHWM`` after.
    """
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    base = _rss_mb("VmRSS")
    fn()
    return _rss_mb("VmHWM") - base


KINDS = {"trace": "trace_once", "naive": "naive_lens", "plain": "plain_once"}


def peak_mb(kind: str, size: dict) -> float:
    """:func:`peak_extra_mb` of one method, in a fresh process with the model warmed up."""
    code = (
        "import sys, json; sys.path.insert(0, 'benchmarks'); import run; "
        f"s = json.loads({json.dumps(json.dumps(size))}); "
        "lm = run.make(s['V'], s['L'], s['d'], s['image']); run.plain_generate(lm, 2, False); "
        f"fn = getattr(run, {KINDS[kind]!r}); "
        "print(run.peak_extra_mb(lambda: fn(lm, s['T'])))"
    )
    # glibc otherwise keeps freed blocks of up to 32 MB in its heap (its mmap threshold rises
    # as blocks are freed), so RSS would count allocator caching, not live tensors.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
        env=env,
    )
    return float(out.stdout.strip().splitlines()[-1])


def macs_ratio(size: dict, prompt_len: int) -> float:
    """Trace / generate counted in multiply-adds of the decoder's linear layers and heads.

    Generate: ``(P + T)`` positions through ``L`` layers (``~12 d^2`` each with this MLP
    width) plus ``T`` head projections; the lens adds ``(L + 1) T`` head projections.
    """
    V, L, d, T = size["V"], size["L"], size["d"], size["T"]
    generate = (prompt_len + T) * L * 12 * d * d + T * d * V
    return (generate + (L + 1) * T * d * V) / generate


def plain_once(lm: LoadedModel, T: int):
    return plain_generate(lm, T, hidden_states=False)


def trace_once(lm: LoadedModel, T: int):
    return trace(lm, picture(lm), PROMPT, T, top_k=10)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(2)
    if args.quick:
        size, repeat, Ts, Vs, ks = (
            dict(V=2000, L=8, d=64, T=8, image=32),
            1,
            (4, 8),
            (500, 2000),
            (2,),
        )
    else:
        size, repeat, Ts, Vs, ks = (
            dict(V=32000, L=8, d=512, T=32, image=192),  # 576 image tokens, as LLaVA-1.5
            5,
            (16, 32, 64),
            (8000, 32000),
            (2, 4),
        )
    lm = make(size["V"], size["L"], size["d"], size["image"])
    T, L = size["T"], size["L"]
    prompt_len = prepare_inputs(lm, picture(lm), PROMPT)[0]["input_ids"].shape[1]
    results: dict = {"size": size, "prompt_tokens": prompt_len}

    t_plain, t_trace, t_naive = best_of(
        lambda: plain_generate(lm, T),
        lambda: trace_once(lm, T),
        lambda: naive_lens(lm, T),
        repeat=repeat,
    )
    macs = macs_ratio(size, prompt_len)
    results["a_trace_vs_generate"] = t_trace / t_plain
    results["a_macs_ratio"] = macs
    print(
        f"a. trace / plain generate(hidden states)   {t_trace / t_plain:5.2f}x  "
        f"({t_trace:.2f}s vs {t_plain:.2f}s, {prompt_len} prompt tokens; goal <= 1.10x)\n"
        f"   multiply-adds: trace / generate = {macs:.2f}x (the lens's (L+1) head "
        "projections per token)"
    )

    results["b_time_trace_vs_naive"] = t_trace / t_naive
    results["b_peak_mb"] = {}
    for t in (T, 4 * T):  # the naive lens grows with T; trace's work arrays do not
        at_t = {**size, "T": t}
        m_trace, m_naive = peak_mb("trace", at_t), peak_mb("naive", at_t)
        results["b_peak_mb"][t] = {"trace": m_trace, "naive": m_naive}
        print(
            f"b. T={t}: peak extra memory trace {m_trace:.0f} MB vs naive {m_naive:.0f} MB "
            f"(naive keeps [K, L+1, V] = {t * (L + 1) * size['V'] * 4 / 2**20:.0f} MB "
            "twice: logits and probabilities)"
        )
    print(
        f"b. trace / naive lens: time {t_trace / t_naive:5.2f}x (trace also reduces: top-k, "
        "rank, entropy, JS)"
    )

    results["c_skip"] = {}
    for k in ks:
        layers = list(range(L // 2 - k // 2, L // 2 - k // 2 + k))

        def skipped(layers=layers):
            with skip_layers(lm.anatomy, layers):
                plain_generate(lm, T, False)

        base, t_k = best_of(lambda: plain_generate(lm, T, False), skipped, repeat=repeat)
        ideal = L / (L - k)
        results["c_skip"][k] = {"speedup": base / t_k, "ideal": ideal, "ratio": base / t_k / ideal}
        print(
            f"c. skip {k} of {L} layers: speed-up {base / t_k:4.2f}x vs ideal {ideal:4.2f}x "
            f"= {base / t_k / ideal:4.2f} of ideal (goal >= 0.9; the vision tower, embeddings, "
            "lm_head and generate's per-step work are not skipped)"
        )

    results["d_scaling_T"] = {
        t: best_of(lambda t=t: trace_once(lm, t), repeat=repeat)[0] for t in Ts
    }
    print(
        "d. trace time vs T: "
        + ", ".join(f"T={t}: {s:.2f}s" for t, s in results["d_scaling_T"].items())
    )
    results["d_scaling_V"] = {}
    for v in Vs:
        lm_v = make(v, L, size["d"], size["image"])
        t_v, t_g = best_of(
            lambda lm_v=lm_v: trace_once(lm_v, T),
            lambda lm_v=lm_v: plain_generate(lm_v, T),
            repeat=repeat,
        )
        results["d_scaling_V"][v] = t_v / t_g
    print(
        "d. trace / generate vs V: "
        + ", ".join(f"V={v}: {r:.2f}x" for v, r in results["d_scaling_V"].items())
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
