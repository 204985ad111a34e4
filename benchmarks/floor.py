"""How close trace() comes to its physical floor, printed as ratios measured in one run.

    python benchmarks/floor.py            # T = 32, 128, 512 (about 12 minutes on 2 CPU cores)
    python benchmarks/floor.py --quick    # tiny sizes, seconds (used by the test suite)

A random-weight LLaVA-architecture model (vocabulary 32 000, 16 decoder layers, d = 1024,
576 image tokens: a 585-token prompt), CPU float32, greedy, exactly T generated tokens.
For each T, interleaved rounds of:

- plain: ``generate()`` alone (no hooks, no hidden states);
- floor: the lens's unavoidable work, a bare batched head product + log-softmax over the
  same recorded residuals, in the chunks ``trace()`` uses by default;
- trace: ``trace()`` end to end.

Goal: trace / (plain + floor) <= 1.05 at T = 128 and 512, given as the ratio of the best
times and as the median of the per-round ratios. Then, at the middle T, where trace's time
goes: the model's forward passes (generate, less the reductions trace runs inside it), lens
products and reductions (``torch.profiler`` regions ``lvlm_kit.lens`` / ``lvlm_kit.reduce``
with their top operators), bookkeeping (decoding the text and the vocabulary), and the
recording hooks, timed directly (a clock inside each hook, plus PyTorch's cost of calling
a hooked module); and the peak memory a call adds at the smallest and largest T and at
twice the largest (where trace reduces during the generation), in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import make, peak_mb, picture, plain_generate, rounds  # noqa: E402

from lvlm_kit import trace  # noqa: E402
from lvlm_kit.generation import greedy_config  # noqa: E402
from lvlm_kit.inputs import prepare_inputs  # noqa: E402
from lvlm_kit.surgery import ResidualRecorder  # noqa: E402
from lvlm_kit.tracing import chunk_steps, reduce_steps  # noqa: E402

PROMPT = "describe this image."
CHUNK_MB = 64.0  # trace()'s default
REGIONS = (
    "lvlm_kit.generate",
    "lvlm_kit.stream",
    "lvlm_kit.lens",
    "lvlm_kit.reduce",
    "lvlm_kit.bookkeeping",
)


def recorded(lm, T: int, recorder: type[ResidualRecorder] = ResidualRecorder) -> torch.Tensor:
    """``[T, L+1, d]`` residuals of a greedy generation, as trace() records them."""
    inputs, _ = prepare_inputs(lm, picture(lm), PROMPT)
    with recorder(lm.anatomy) as rec, torch.inference_mode():
        lm.model.generate(**inputs, generation_config=greedy_config(lm.model, T))
    return rec.stacked()


def floor(lm, residuals: torch.Tensor) -> None:
    """The head product and log-softmax of every lens layer, chunked as trace() does."""
    lens = lm.lens("final_norm")
    chunk = chunk_steps(CHUNK_MB, residuals.shape[1], lens.vocab_size)
    for start in range(0, len(residuals), chunk):
        lens.log_probs(residuals[start : start + chunk])


def hook_seconds(lm, T: int) -> float:
    """Seconds the recorder's hooks cost in one generation of T tokens.

    The time the recorder spends on each hidden state it is handed (a clock around
    :meth:`~lvlm_kit.surgery.LensTap.on_state`) plus, per call, what PyTorch adds to calling
    a module that has a hook (measured on ``nn.Identity``).
    """
    spent, calls = [0.0], [0]

    class Timed(ResidualRecorder):
        def on_state(self, layer: int, hidden: torch.Tensor) -> None:
            start = time.perf_counter()
            super().on_state(layer, hidden)
            spent[0] += time.perf_counter() - start
            calls[0] += 1

    recorded(lm, T, Timed)
    identity, x, n = torch.nn.Identity(), torch.zeros(1), 20000

    def per_call() -> float:
        start = time.perf_counter()
        for _ in range(n):
            identity(x)
        return (time.perf_counter() - start) / n

    bare = min(per_call() for _ in range(3))
    handle = identity.register_forward_hook(lambda *a: None)
    hooked = min(per_call() for _ in range(3))
    handle.remove()
    return spent[0] + calls[0] * max(0.0, hooked - bare)


def split(lm, T: int) -> dict:
    """Seconds per part of one trace() from the profiler; the hooks timed directly."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trace(lm, picture(lm), PROMPT, T)
    events = prof.key_averages()
    region = {e.key: e.cpu_time_total / 1e6 for e in events if e.key in REGIONS}
    parts = {
        "model forward": region.get("lvlm_kit.generate", 0.0) - region.get("lvlm_kit.stream", 0.0),
        "lens products": region.get("lvlm_kit.lens", 0.0),
        "reductions": region.get("lvlm_kit.reduce", 0.0),
        "bookkeeping": region.get("lvlm_kit.bookkeeping", 0.0),
    }
    lens, residuals = lm.lens("final_norm"), recorded(lm, T)
    ids = torch.zeros(len(residuals), dtype=torch.long)
    with profile(activities=[ProfilerActivity.CPU]) as prof:  # the lens part alone, by operator
        reduce_steps(lens, residuals, ids)
    ops = sorted(
        (e for e in prof.key_averages() if e.key.startswith("aten::")),
        key=lambda e: -e.self_cpu_time_total,
    )
    top = {e.key: e.self_cpu_time_total / 1e6 for e in ops[:8]}
    total = sum(parts.values())
    return {"profiled_s": total, "parts_s": parts, "hooks_s": hook_seconds(lm, T), "top_ops_s": top}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(2)
    if args.quick:
        size, Ts, repeats = dict(V=2000, L=4, d=64, image=32), (4, 8, 16), (1, 1, 1)
    else:
        size, Ts, repeats = dict(V=32000, L=16, d=1024, image=192), (32, 128, 512), (3, 7, 3)
    lm = make(size["V"], size["L"], size["d"], size["image"])
    prompt_len = prepare_inputs(lm, picture(lm), PROMPT)[0]["input_ids"].shape[1]
    results: dict = {"size": size, "prompt_tokens": prompt_len, "T": {}}
    print(
        f"vocabulary {size['V']}, {size['L']} layers, d = {size['d']}, "
        f"{prompt_len}-token prompt, {torch.get_num_threads()} threads"
    )
    for T, repeat in zip(Ts, repeats):
        residuals = recorded(lm, T)
        plain, bare, full = rounds(
            lambda T=T: plain_generate(lm, T, hidden_states=False),
            lambda r=residuals: floor(lm, r),
            lambda T=T: trace(lm, picture(lm), PROMPT, T),
            repeat=repeat,
        )
        t_plain, t_floor, t_trace = min(plain), min(bare), min(full)
        per_round = [t / (p + f) for p, f, t in zip(plain, bare, full)]
        r = {
            "plain_s": t_plain,
            "floor_s": t_floor,
            "trace_s": t_trace,
            "trace_vs_plain": t_trace / t_plain,
            "floor_vs_plain": (t_plain + t_floor) / t_plain,
            "trace_vs_plain_plus_floor": t_trace / (t_plain + t_floor),
            "rounds": {"plain_s": plain, "floor_s": bare, "trace_s": full},
            "median_round_trace_vs_plain_plus_floor": statistics.median(per_round),
        }
        results["T"][T] = r
        print(
            f"T={T:4d}: plain {t_plain:6.2f}s  floor {t_floor:5.2f}s  trace {t_trace:6.2f}s | "
            f"trace/plain {r['trace_vs_plain']:.3f}x  (plain+floor)/plain "
            f"{r['floor_vs_plain']:.3f}x  trace/(plain+floor) "
            f"{r['trace_vs_plain_plus_floor']:.3f}x best, "
            f"{r['median_round_trace_vs_plain_plus_floor']:.3f}x median of {repeat} rounds "
            "(goal <= 1.05)"
        )

    T = Ts[1]
    results["split"] = s = split(lm, T)
    # The work trace does beyond plain + floor, as a ratio that the machine's drift between
    # rounds does not move: reductions, hooks and bookkeeping over the best plain + floor.
    extra = s["parts_s"]["reductions"] + s["hooks_s"] + s["parts_s"]["bookkeeping"]
    at = results["T"][T]
    s["accounted_trace_vs_plain_plus_floor"] = 1 + extra / (at["plain_s"] + at["floor_s"])
    print(f"where trace's time goes at T={T} (torch.profiler, {s['profiled_s']:.2f}s profiled):")
    for name, sec in s["parts_s"].items():
        print(f"   {name:14s} {sec:6.3f}s  {sec / s['profiled_s']:6.1%}")
    print(f"   of the model forward: recording hooks {s['hooks_s']:.3f}s (timed inside the hooks)")
    print(
        f"   work beyond plain + floor (reductions, hooks, bookkeeping): "
        f"{s['accounted_trace_vs_plain_plus_floor']:.3f}x of plain + floor"
    )
    print(
        "   lens + reductions by operator (self time): "
        + ", ".join(f"{k.removeprefix('aten::')} {v:.3f}s" for k, v in s["top_ops_s"].items())
    )

    results["peak_mb"] = {}
    for t in (Ts[0], Ts[-1], 2 * Ts[-1]):  # 2 * T: long enough to reduce while generating
        at_t = {**size, "T": t}
        results["peak_mb"][t] = {"trace": peak_mb("trace", at_t), "plain": peak_mb("plain", at_t)}
    print(
        "peak memory added by a call (fresh process), trace vs plain generate: "
        + ", ".join(
            f"T={t}: {m['trace']:.0f} vs {m['plain']:.0f} MB" for t, m in results["peak_mb"].items()
        )
    )
    print(
        "   (trace adds the recorded residuals [T, L+1, d] while they fit in chunk_mb, else "
        "the lens's work arrays for one chunk during the generation: bounded in T)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
