"""trace() / plain greedy generate() at LLaVA-1.5-7B's shapes on a GPU (random weights, bf16).

    python benchmarks/device_7b.py [--T 256] [--repeat 3]

Vision tower CLIP ViT-L/14 at 336 px (576 image tokens), 32 decoder layers, d = 4096,
intermediate 11008, vocabulary 32064. Needs a CUDA GPU; prints the timings and the ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lvlm_kit import LoadedModel, trace  # noqa: E402
from lvlm_kit.anatomy import resolve_anatomy  # noqa: E402
from lvlm_kit.testbed.model import LlavaShape, build_model, llava_processor  # noqa: E402
from lvlm_kit.testbed.tokenizer import build_word_tokenizer  # noqa: E402

PROMPT = "describe this image."
SHAPE = LlavaShape(
    image_size=336,
    patch_size=14,
    vision_hidden=1024,
    vision_layers=24,
    vision_heads=16,
    hidden=4096,
    layers=32,
    heads=32,
    kv_heads=32,
    intermediate=11008,
    max_positions=4096,
)


def make(shape: LlavaShape = SHAPE, vocab: int = 32064) -> LoadedModel:
    """A random-weight LLaVA of ``shape`` in bf16, built on the GPU (the CPU without one)."""
    words = [f"w{i}" for i in range(vocab - 8)] + ["describe", "this", "image"]
    tok = build_word_tokenizer(words)
    torch.set_default_device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(shape, tok).to(torch.bfloat16)
    torch.set_default_device("cpu")
    model.generation_config.eos_token_id = None  # always generate exactly T tokens
    return LoadedModel(model, llava_processor(shape, tok), resolve_anatomy(model), "7b-shape")


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn) -> float:
    """Wall seconds of ``fn()``, the GPU's queue drained before and after."""
    _sync()
    start = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run import picture, plain_generate  # noqa: PLC0415

    lm = make()
    image = picture(lm)
    gen = lambda: plain_generate(lm, args.T, hidden_states=False)  # noqa: E731
    tr = lambda: trace(lm, image, PROMPT, args.T)  # noqa: E731
    gen(), tr()
    times = {"generate": [], "trace": []}
    for _ in range(args.repeat):
        times["generate"].append(timed(gen))
        times["trace"].append(timed(tr))
    out = {
        "device": torch.cuda.get_device_name(),
        "T": args.T,
        "image_tokens": SHAPE.n_image_tokens,
        "generate_s": min(times["generate"]),
        "trace_s": min(times["trace"]),
        "all": times,
        "peak_gpu_gb": torch.cuda.max_memory_allocated() / 2**30,
    }
    out["ratio"] = out["trace_s"] / out["generate_s"]
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
