"""``lvlm-kit``: trace a whole dataset into a store on disk, and score the store.

    lvlm-kit trace --model testbed --data AMBER_ROOT --out traces/ [--max-new-tokens 64]
    lvlm-kit trace --model testbed --data images/ --prompt "Describe this image." --out traces/
    lvlm-kit evaluate --store traces/ --data AMBER_ROOT
    accelerate launch --num_processes 2 -m lvlm_kit.cli trace ...   # items sharded (GPUs)
    accelerate launch --multi_gpu --num_processes 2 -m lvlm_kit.cli trace ...  # CPU processes

A dataset is an AMBER-layout folder (real AMBER or a testbed export) or a folder of images
with one ``--prompt``. Each item becomes ``<out>/<id>.safetensors``, written atomically, so
a file that exists is complete: a rerun skips finished items and a run killed at any
moment (even ``kill -9``) resumes with nothing lost and nothing corrupt.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class Item:
    """One thing to trace."""

    id: str  # file stem in the store (AMBER id or image stem)
    image: Path
    prompt: str


def dataset_items(
    data: str | Path, prompt: str | None = None, queries: str = "generative"
) -> list[Item]:
    """Items of an AMBER-layout folder or of a folder of images.

    Raises:
        FileNotFoundError: ``data`` is not a folder.
        ValueError: a folder of images without ``prompt``, or with no image in it.
    """
    from .hallucination import read_amber

    root = Path(data).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: '{root}'")
    if (root / "data" / "annotations.json").is_file():
        amber = read_amber(root, queries)
        return [
            Item(str(q["id"]), amber.image_path(q), prompt or q["query"]) for q in amber.queries
        ]
    images = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ValueError(
            f"'{root}' holds no AMBER layout and no images ({', '.join(IMAGE_SUFFIXES)})."
        )
    if not prompt:
        raise ValueError("a folder of images needs a prompt: pass --prompt 'Describe this image.'")
    return [Item(p.stem, p, prompt) for p in images]


def trace_dataset(
    loaded,
    items: Sequence[Item],
    out: str | Path,
    max_new_tokens: int = 64,
    process_index: int = 0,
    num_processes: int = 1,
    progress: bool = True,
    **trace_kwargs,
) -> list[Path]:
    """Trace this process's share of ``items`` into ``out``; finished items are skipped.

    Args:
        loaded: the model.
        items: everything to trace (each process takes every ``num_processes``-th item).
        out: the store folder.
        max_new_tokens: generation limit.
        process_index: this process's rank.
        num_processes: how many processes share the items.
        progress: show a progress bar.
        **trace_kwargs: forwarded to :func:`~lvlm_kit.trace.trace`.

    Returns:
        Paths of the items written by this call.
    """
    from .trace import trace

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mine = list(items)[process_index::num_processes]
    for item in mine:  # temp files of a killed earlier run (only this process's items)
        for stale in out.glob(f".{item.id}.safetensors.*.tmp"):
            stale.unlink(missing_ok=True)
    todo = [it for it in mine if not (out / f"{it.id}.safetensors").is_file()]
    written = []
    bar = tqdm(todo, desc=f"trace [{process_index}]", position=process_index, disable=not progress)
    for item in bar:
        tr = trace(loaded, item.image, item.prompt, max_new_tokens, **trace_kwargs)
        tr.meta.update(item_id=item.id, image=str(item.image))
        written.append(tr.save(out / f"{item.id}.safetensors"))
    return written


def evaluate_store(store: str | Path, data: str | Path, queries: str = "generative") -> dict:
    """Score a trace store's generated texts against AMBER annotations.

    Returns:
        Generative metrics (CHAIR, Cover, Hal, Cog) or discriminative ones, with counts.
    """
    from .hallucination import read_amber, score_discriminative, score_generative
    from .trace import Trace

    store = Path(store)
    paths = sorted(store.glob("*.safetensors"))
    if not paths:
        raise FileNotFoundError(f"no traces in '{store}'; run `lvlm-kit trace` first.")
    amber = read_amber(data, queries)
    wanted = {str(q["id"]) for q in amber.queries}
    responses = [
        {"id": int(p.stem), "response": Trace.load(p).generated_text}
        for p in paths
        if p.stem in wanted
    ]
    if not responses:
        raise ValueError(f"no trace in '{store}' matches a {queries} query of '{data}'.")
    if queries == "generative":
        scores = score_generative(responses, amber).as_dict()
    else:
        scores = score_discriminative(responses, amber)
    scores["n_missing"] = len(wanted) - len(responses)
    return scores


def _write_json(path: Path, value: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(value, f, indent=2)
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="lvlm-kit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("trace", help="trace every item of a dataset into a store")
    t.add_argument("--model", default="testbed", help="hub id, local folder or 'testbed'")
    t.add_argument("--data", required=True, help="AMBER-layout folder or folder of images")
    t.add_argument("--out", required=True, help="store folder (one .safetensors per item)")
    t.add_argument("--prompt", help="prompt for a folder of images (overrides AMBER's)")
    t.add_argument("--queries", default="generative", help="AMBER query file (generative...)")
    t.add_argument("--max-new-tokens", type=int, default=64)
    t.add_argument("--quantization", choices=["4bit", "8bit"])
    t.add_argument("--dtype", default="auto")
    t.add_argument("--lens-norm", default="final_norm", choices=["final_norm", "raw"])
    t.add_argument("--top-k", type=int, default=10)
    t.add_argument("--keep-hidden", action="store_true", help="store residuals [K, L+1, d]")
    e = sub.add_parser("evaluate", help="score a store with the AMBER scorer")
    e.add_argument("--store", required=True)
    e.add_argument("--data", required=True)
    e.add_argument("--queries", default="generative")
    sub.add_parser("reproduce", help="run every notebook headless (as `make reproduce`)")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["reproduce"]:  # its own options: --output DIR, -p NAME VALUE, --only
        from .reproduce import main as reproduce

        return reproduce(argv[1:])
    args = parser.parse_args(argv)

    if args.command == "evaluate":
        scores = evaluate_store(args.store, args.data, args.queries)
        _write_json(Path(args.store) / f"scores_{args.queries}.json", scores)
        print(json.dumps(scores, indent=2))
        return 0

    import torch
    from accelerate import PartialState

    from .loading import load_model

    # Without CUDA, accelerate only shards across CPU processes when told `cpu=True`.
    state = PartialState(cpu=not torch.cuda.is_available())
    items = dataset_items(args.data, args.prompt, args.queries)
    device_map = {"": str(state.device)} if state.num_processes > 1 else None
    loaded = load_model(args.model, args.quantization, args.dtype, device_map=device_map)
    written = trace_dataset(
        loaded, items, args.out, args.max_new_tokens, state.process_index, state.num_processes,
        lens_norm=args.lens_norm, top_k=args.top_k, keep_hidden=args.keep_hidden,
    )  # fmt: skip
    print(
        f"[{state.process_index}/{state.num_processes}] wrote {len(written)} traces to {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
