"""One model against a reference on the same images: does a 4-bit run show the same picture?

:func:`run` traces a model on AMBER-layout data and scores its hallucinations;
:func:`compare` measures, image by image, how far another run (a quantized copy, or a
random-weight control) is from the reference run: generated-token agreement, the
adjacent-layer JS curve's correlation, and the per-layer KL between the two models' lens
distributions on the reference's own continuation (teacher forcing, so both read the same
tokens). Notebook 09 turns these into claims (:mod:`lvlm_kit.claims`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .data import AmberData
from .divergence import kl_divergence
from .hallucination import analyse_response
from .inputs import prepare_inputs
from .lens import NormPolicy
from .loading import LoadedModel
from .stages import Stages, detect_stages
from .surgery import ResidualRecorder
from .trace import Trace, trace


@dataclass
class Run:
    """One model traced on the images of an AMBER-layout dataset."""

    name: str
    traces: list[Trace]  # [N], one per image
    stages: Stages  # detected over all traces
    hallucinated: np.ndarray  # [N] hallucinated object nouns per response
    counted: np.ndarray  # [N] nouns in CHAIR's denominator per response
    covered: np.ndarray  # [N] annotated objects the response names
    truth: np.ndarray  # [N] annotated objects per image
    memory_bytes: int  # the model's parameters and buffers (quantized sizes)

    def chair_of(self, idx: np.ndarray | slice = slice(None)) -> float:
        """Pooled CHAIR of the images ``idx``: hallucinated nouns over counted nouns."""
        return float(self.hallucinated[idx].sum() / max(self.counted[idx].sum(), 1))

    def cover_of(self, idx: np.ndarray | slice = slice(None)) -> float:
        """Pooled Cover of the images ``idx``: named annotated objects over annotated ones."""
        return float(self.covered[idx].sum() / max(self.truth[idx].sum(), 1))

    @property
    def chair(self) -> float:
        """Pooled CHAIR over all images."""
        return self.chair_of()

    @property
    def cover(self) -> float:
        """Pooled Cover over all images."""
        return self.cover_of()


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


def run(
    loaded: LoadedModel,
    amber: AmberData,
    prompt: str,
    max_new_tokens: int,
    lens_norm: NormPolicy = "final_norm",
    n_images: int | None = None,
    name: str | None = None,
) -> Run:
    """Trace ``loaded`` on the first ``n_images`` generative queries of ``amber``.

    Returns:
        The :class:`Run`, with hallucinations scored against AMBER's annotations.
    """
    queries = amber.queries[:n_images]
    name = name or loaded.name
    traces = [
        trace(loaded, amber.image_path(q), prompt, max_new_tokens, lens_norm=lens_norm)
        for q in tqdm(queries, desc=f"trace {name}")
    ]
    scores = []  # per image: hallucinated, counted, covered, truth
    for q, t in zip(queries, traces):
        ann = amber.annotations[int(q["id"])]
        a = analyse_response(
            t.generated_text, ann["truth"], ann.get("hallu", []), amber.relation, amber.safe_words
        )
        scores.append((len(a.hallucinated), a.n_counted, len(a.covered), len(ann["truth"])))
    per = np.array(scores).reshape(-1, 4).T
    return Run(name, traces, detect_stages(traces), *per, memory_footprint(loaded))


def memory_footprint(loaded: LoadedModel) -> int:
    """Bytes of the model's parameters and buffers as stored (4-bit weights count 4 bits)."""
    return int(loaded.model.get_memory_footprint())


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


def _correlation(x: np.ndarray, y: np.ndarray) -> float:
    if np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


__all__: Sequence[str] = [
    "Comparison",
    "Run",
    "compare",
    "lens_kl",
    "memory_footprint",
    "run",
    "token_agreement",
]
