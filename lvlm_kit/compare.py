"""One model against a reference on the same images: does a 4-bit run show the same picture?

:func:`~lvlm_kit.runs.run` traces a model on AMBER-layout data and scores its
hallucinations; :func:`compare` measures, image by image, how far another run (a quantized
copy, or a random-weight control) is from the reference run: generated-token agreement, the
adjacent-layer JS curve's correlation, and the per-layer KL between the two models' lens
distributions on the reference's own continuation (teacher forcing, so both read the same
tokens). Notebook 09 turns these into claims (:mod:`lvlm_kit.claims`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .data import AmberData
from .divergence import kl_divergence
from .inputs import prepare_inputs
from .lens import NormPolicy
from .loading import LoadedModel
from .runs import Run
from .surgery import ResidualRecorder


@dataclass
class Comparison:
    """Per-image distances of one run from the reference run."""

    reference: Run
    other: Run
    token_agreement: np.ndarray  # [N] share of the reference's tokens reproduced in order
    js_correlation: np.ndarray  # [N] Pearson r of the adjacent-layer JS curves (NaN if flat)
    lens_kl: np.ndarray  # [N, L+1] mean KL(reference || other) in nats, per lens layer
    #: claims measured on this comparison as a control, kept for the next variant's claim
    estimates: dict[Any, Any] = field(default_factory=dict, repr=False)

    @property
    def worst_lens_kl(self) -> float:
        """The largest per-layer mean lens KL (nats): the layer where the two differ most."""
        return float(self.lens_kl.mean(0).max())

    def row(self) -> dict[str, Any]:
        """This run's line of :func:`summary_table`."""
        return _row(
            self.other,
            float(self.token_agreement.mean()),
            self.worst_lens_kl,
            float(self.js_correlation.mean()),
        )


def token_agreement(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Share of ``reference``'s tokens that ``other`` reproduces before the first difference.

    Args:
        reference: ``[K]`` generated ids of the reference.
        other: ``[K']`` generated ids of the other model.
    """
    n = min(len(reference), len(other))
    same = (reference[:n] == other[:n]).long()
    prefix = int(same.cumprod(0).sum()) if n else 0
    return prefix / max(len(reference), 1)


@torch.inference_mode()
def lens_kl(
    reference: LoadedModel,
    other: LoadedModel,
    image: object,
    prompt: str,
    continuation: torch.Tensor,
    lens_norm: NormPolicy = "final_norm",
) -> np.ndarray:
    """Mean KL(reference || other) of the lens distributions, per lens layer.

    Both models read the prompt and ``continuation`` (the reference's generated ids); at
    each position that predicts a continuation token, every lens layer's distribution of
    the reference is compared with the other model's at the same layer. One layer's
    ``[K, V]`` log-probabilities are held at a time.

    Args:
        reference: the reference model.
        other: the same architecture (a quantized copy, a control).
        image: the image (None for text-only models).
        prompt: the instruction.
        continuation: ``[K]`` ids the reference generated.
        lens_norm: lens norm policy.

    Returns:
        ``[L+1]`` float64 KL in nats (0 = identical lens distributions).
    """
    kls = []
    hidden = []
    for model in (reference, other):
        inputs, _ = prepare_inputs(model, image, prompt)
        ids = continuation[:-1].to(inputs["input_ids"].device)[None]
        start = inputs["input_ids"].shape[1] - 1
        inputs["input_ids"] = torch.cat([inputs["input_ids"], ids], dim=1)
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        with ResidualRecorder(model.anatomy, all_positions=True) as rec:
            model.model(**inputs, use_cache=False)
        hidden.append(rec.stacked()[0, :, start:].transpose(0, 1))  # [K, L+1, d]
    lens_ref, lens_other = reference.lens(lens_norm), other.lens(lens_norm)
    for layer in range(reference.anatomy.n_layers + 1):
        lp = lens_ref.log_probs(hidden[0][:, layer], layer=layer)  # [K, V]
        lq = lens_other.log_probs(hidden[1][:, layer], layer=layer)
        kls.append(float(kl_divergence(lp, lq).mean()))
    return np.array(kls)


def compare(
    reference_model: LoadedModel,
    reference: Run,
    other_model: LoadedModel,
    other: Run,
    amber: AmberData,
    prompt: str,
    lens_norm: NormPolicy = "final_norm",
) -> Comparison:
    """Image by image distances of ``other`` from ``reference`` (same images, same order).

    Raises:
        ValueError: the runs cover different numbers of images.
    """
    if len(reference.traces) != len(other.traces):
        raise ValueError("the two runs must trace the same images.")
    queries = amber.queries[: len(reference.traces)]
    agree, corr, kl = [], [], []
    for q, a, b in tqdm(
        list(zip(queries, reference.traces, other.traces)), desc=f"compare {other.name}"
    ):
        agree.append(token_agreement(a.token_ids, b.token_ids))
        corr.append(_correlation(a.js.mean(0).numpy(), b.js.mean(0).numpy()))
        kl.append(
            lens_kl(
                reference_model, other_model, amber.image_path(q), prompt, a.token_ids, lens_norm
            )
        )
    return Comparison(reference, other, np.array(agree), np.array(corr), np.stack(kl))


def _row(run: Run, agreement: float, worst_kl: float, js_correlation: float) -> dict[str, Any]:
    return {
        "run": run.name,
        "memory (MB)": run.memory_bytes / 2**20,
        "token agreement": agreement,
        "worst-layer lens KL (nats)": worst_kl,
        "JS curve correlation": js_correlation,
        "critical layer": run.stages.critical_layer,
        "first mutation layer": run.stages.first_mutation_layer,
        "CHAIR": run.chair,
        "Cover": run.cover,
    }


def summary_table(reference: Run, comparisons: Sequence[Comparison]) -> pd.DataFrame:
    """The reference run and each compared run in one table, one row per run (its name).

    Columns: memory (MB), token agreement, worst-layer lens KL (nats), JS curve
    correlation, critical layer, first mutation layer, CHAIR, Cover; the reference agrees
    with itself (1, 0, 1).
    """
    rows = [_row(reference, 1.0, 0.0, 1.0), *(c.row() for c in comparisons)]
    return pd.DataFrame(rows).set_index("run")


def _correlation(x: np.ndarray, y: np.ndarray) -> float:
    if np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


__all__: Sequence[str] = [
    "Comparison",
    "compare",
    "lens_kl",
    "summary_table",
    "token_agreement",
]
