"""A trace store: one folder, one ``<item id>.safetensors`` Trace per dataset item.

:func:`trace_dataset` fills a store (what ``lvlm-kit trace`` runs), :func:`evaluate_store`
scores the generated texts in it against AMBER annotations (``lvlm-kit evaluate``). Each
file is written atomically, so a file that exists is complete: a rerun skips finished
items and a run killed at any moment (even ``kill -9``) resumes with nothing lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from .data import Item, read_amber
from .hallucination import score_discriminative, score_generative
from .loading import LoadedModel
from .trace import Trace, trace


def trace_dataset(
    loaded: LoadedModel,
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
