"""``lvlm-kit``: trace a whole dataset into a store on disk, score the store, reproduce.

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
import sys
from collections.abc import Sequence
from pathlib import Path

from .quantization import QUANTIZATIONS


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
    t.add_argument("--quantization", choices=[q for q in QUANTIZATIONS if q])
    t.add_argument("--dtype", default="auto")
    t.add_argument("--lens-norm", default="final_norm", choices=["final_norm", "raw"])
    t.add_argument("--top-k", type=int, default=10)
    t.add_argument("--keep-hidden", action="store_true", help="store residuals [K, L+1, d]")
    t.add_argument(
        "--overwrite", action="store_true", help="re-trace items made with other settings"
    )
    t.add_argument(
        "--keep-going",
        action="store_true",
        help="record a failing item's error and go on (exit code 1 at the end if any failed)",
    )
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
        from .files import write_json
        from .store import evaluate_store

        scores = evaluate_store(args.store, args.data, args.queries)
        print(json.dumps(scores, indent=2))  # first: a full disk must not lose them
        path = Path(args.store) / f"scores_{args.queries}.json"
        try:
            write_json(path, scores)
        except OSError as exc:
            print(
                f"could not save the scores to {path} ({exc.strerror or exc}); they are "
                "printed above. Free some space and run evaluate again to save them.",
                file=sys.stderr,
            )
            return 1
        return 0

    import torch
    from accelerate import PartialState

    from .data import dataset_items
    from .loading import load_model
    from .store import check_settings, store_settings, trace_dataset

    # Without CUDA, accelerate only shards across CPU processes when told `cpu=True`.
    state = PartialState(cpu=not torch.cuda.is_available())
    items = dataset_items(args.data, args.prompt, args.queries)
    source = str(Path(args.data).resolve())
    trace_kwargs = {
        "lens_norm": args.lens_norm,
        "top_k": args.top_k,
        "keep_hidden": args.keep_hidden,
    }
    # Refuse other settings before loading the model (its dtype is compared once loaded).
    early = store_settings(args.model, None, items, source, args.max_new_tokens, **trace_kwargs)
    check_settings(args.out, early, args.overwrite, record=False)
    device_map = {"": str(state.device)} if state.num_processes > 1 else None
    loaded = load_model(args.model, args.quantization, args.dtype, device_map=device_map)
    run = trace_dataset(
        loaded,
        items,
        args.out,
        args.max_new_tokens,
        source=source,
        overwrite=args.overwrite,
        keep_going=args.keep_going,
        process_index=state.process_index,
        num_processes=state.num_processes,
        **trace_kwargs,
    )
    print(f"[{state.process_index}/{state.num_processes}] {run.summary()} in {args.out}")
    if run.elsewhere:
        print(
            f"[{state.process_index}/{state.num_processes}] {len(run.elsewhere)} items were "
            "left to another run that holds them; run trace again once it ends to check they "
            "are done.",
            file=sys.stderr,
        )
    return 1 if run.failed or run.elsewhere else 0


if __name__ == "__main__":
    sys.exit(main())
