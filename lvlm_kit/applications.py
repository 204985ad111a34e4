"""Applications of the stages (paper §6): compression by skipping, hallucination mitigation.

Both run on any AMBER-layout dataset (real AMBER or the testbed's export) and are scored
with :mod:`lvlm_kit.hallucination`:

- :func:`compression_sweep`: skip the k most stable layers (lowest mean adjacent JS in the
  stabilisation stage) for k = 0, 1, ...; report object precision (1 − CHAIR), object
  recall (Cover), existence-question accuracy and generation speed.
- :func:`compare_decoding`: plain greedy decoding vs skipping the mutation layers (skip2),
  a DoLa-style layer contrast, and an anchor to the last pre-mutation layer, scored with
  CHAIR / Cover / Hal / Cog.

:class:`LayerContrast` is a ``LogitsProcessor`` that reads the residual stream of chosen
layers during ``generate()`` and decodes it with the float32 lens:

- ``mode="dola"`` (Chuang et al. 2023): per step choose the premature layer with the
  largest JS to the final layer among ``layers``; score ``log p_L − log p_M``.
- ``mode="anchor"``: score ``log p_L + alpha · log p_a`` for one layer ``a`` (DeCo-like),
  favouring tokens already supported before the mutation layers.

Both keep only plausible tokens: ``p_L ≥ relative_top · max p_L``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor

from .data import AmberData
from .divergence import js_divergence
from .generation import generate_texts
from .hallucination import (
    answer_correct,
    noun_counts,
    score_discriminative,
    score_generative,
)
from .loading import LoadedModel
from .stages import Stages, skip_preset
from .surgery import LayerTap


class LayerContrast(LogitsProcessor):
    """Contrast the final layer with earlier layers while generating (see module docs).

    Use as a context manager around ``generate(..., logits_processor=[self])``: the layer
    taps are active inside the ``with`` block only.

    Args:
        loaded: the model.
        layers: lens layers (1..L-1) to read: DoLa's premature candidates, or the anchor.
        mode: ``"dola"`` or ``"anchor"``.
        alpha: weight of the anchor layer's log-probs (``"anchor"`` only).
        relative_top: plausibility threshold relative to the top final probability.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        layers: Sequence[int],
        mode: str = "dola",
        alpha: float = 1.0,
        relative_top: float = 0.1,
    ) -> None:
        if mode not in ("dola", "anchor"):
            raise ValueError(f"mode={mode!r} is unknown; use 'dola' or 'anchor'.")
        L = loaded.anatomy.n_layers
        layers = sorted(set(layers))
        if not layers or any(not 1 <= j < L for j in layers):
            raise ValueError(f"layers must be lens layers in 1..{L - 1}, got {layers}.")
        if mode == "anchor" and len(layers) != 1:
            raise ValueError("mode='anchor' takes exactly one layer.")
        self.layers, self.mode = layers, mode
        self.alpha, self.relative_top = alpha, relative_top
        self.lens = loaded.lens("final_norm")
        self.tap = LayerTap(loaded.anatomy, layers)
        self.chosen: list[int] = []  # DoLa: premature layer chosen at each step (batch row 0)

    def __enter__(self) -> LayerContrast:
        self.tap.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.tap.__exit__(*exc)

    def _layer_logp(self, j: int) -> torch.Tensor:
        return self.lens.log_probs(self.tap.latest[j], layer=j)  # [B, V]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        """Rescore one step: ``scores`` ``[B, V]`` -> contrasted scores ``[B, V]``."""
        if not self.tap.active:
            raise RuntimeError("use LayerContrast inside a `with` block around generate().")
        final = torch.log_softmax(scores.float(), dim=-1)
        V = min(final.shape[-1], self.lens.vocab_size)
        final = final[:, :V]
        if self.mode == "dola":
            cands = torch.stack([self._layer_logp(j)[:, :V] for j in self.layers])  # [C, B, V]
            pick = js_divergence(final[None], cands).argmax(0)  # [B]
            self.chosen.append(self.layers[int(pick[0])])
            other = cands[pick, torch.arange(final.shape[0])]
            out = final - other
        else:
            out = final + self.alpha * self._layer_logp(self.layers[0])[:, :V]
        keep = final >= final.max(-1, keepdim=True).values + torch.log(
            torch.tensor(self.relative_top)
        )
        out = out.masked_fill(~keep, float("-inf"))
        full = torch.full_like(scores, float("-inf"), dtype=out.dtype)
        full[:, :V] = out
        return full


def _answer(data: AmberData, queries: Sequence[dict], max_new_tokens: int, **kw) -> list[dict]:
    texts = generate_texts(
        kw.pop("loaded"),
        [data.image_path(q) for q in queries],
        [q["query"] for q in queries],
        max_new_tokens,
        **kw,
    )
    return [{"id": q["id"], "response": t} for q, t in zip(queries, texts)]


def stable_layers_by_js(stages: Stages) -> list[int]:
    """Decoder layers of the stabilisation stage, most stable (lowest JS into them) first."""
    # From c + 1 (their input is already stable); never the last layer, the model's output.
    lens_layers = range(
        stages.critical_layer + 1, min(stages.first_mutation_layer, stages.n_layers)
    )
    ranked = sorted(lens_layers, key=lambda j: stages.js_curve[j - 1])
    return [j - 1 for j in ranked]


@dataclass
class SweepPoint:
    """Quality and speed with k stable layers skipped."""

    k: int
    skipped: list[int]  # decoder layers
    object_precision: float  # 1 - CHAIR
    object_recall: float  # Cover
    chair: float
    hal: float
    existence_accuracy: float | None  # discriminative accuracy (None without questions)
    existence_correct: dict[str, list[bool]] | None  # image file -> its answers, correct or not
    tokens_per_second: float
    speedup: float  # vs k = 0
    ideal_speedup: float  # L / (L - k), decoder compute only


def sweep_table(points: Sequence[SweepPoint]) -> list[dict]:
    """The sweep as JSON-ready rows (every field but the per-image existence answers)."""
    return [{k: v for k, v in vars(p).items() if k != "existence_correct"} for p in points]


def compression_sweep(
    loaded: LoadedModel,
    generative: AmberData,
    stages: Stages,
    ks: Sequence[int],
    discriminative: AmberData | None = None,
    max_new_tokens: int = 48,
    batch_size: int = 32,
    progress: bool = True,
) -> list[SweepPoint]:
    """Quality and speed against the number of stable layers skipped.

    Args:
        loaded: the model.
        generative: AMBER data with generative queries (descriptions).
        stages: stages detected on this model.
        ks: numbers of layers to skip (k = 0 is always measured first, as the reference).
        discriminative: optional AMBER data with existence questions.
        max_new_tokens: description length limit.
        batch_size: items per ``generate()`` call.
        progress: show progress bars.

    Returns:
        One :class:`SweepPoint` per k, ascending.
    """
    order = stable_layers_by_js(stages)
    ks = sorted({0, *ks})
    if ks[-1] > len(order):
        raise ValueError(f"only {len(order)} stable layers can be skipped, asked for {ks[-1]}.")
    L = loaded.anatomy.n_layers
    points, base_speed = [], None
    for k in ks:
        skipped = sorted(order[:k])
        start = time.perf_counter()
        answers = _answer(
            generative,
            generative.queries,
            max_new_tokens,
            loaded=loaded,
            skip=skipped,
            batch_size=batch_size,
            progress=progress,
            desc=f"skip {k}",
        )
        seconds = time.perf_counter() - start
        n_tokens = sum(len(loaded.tokenizer(a["response"])["input_ids"]) for a in answers)
        speed = n_tokens / seconds
        base_speed = base_speed or speed
        score = score_generative(answers, generative)
        accuracy, correct = None, None
        if discriminative is not None:
            replies = _answer(
                discriminative,
                discriminative.queries,
                3,
                loaded=loaded,
                skip=skipped,
                batch_size=batch_size,
                progress=False,
            )
            accuracy = score_discriminative(replies, discriminative)["accuracy"]
            correct = {}
            for q, ok in zip(discriminative.queries, answer_correct(replies, discriminative)):
                correct.setdefault(q["image"], []).append(ok)
        points.append(
            SweepPoint(
                k=k,
                skipped=skipped,
                object_precision=1 - score.chair,
                object_recall=score.cover,
                chair=score.chair,
                hal=score.hal,
                existence_accuracy=accuracy,
                existence_correct=correct,
                tokens_per_second=speed,
                speedup=speed / base_speed,
                ideal_speedup=L / (L - k),
            )
        )
    return points


def compare_decoding(
    loaded: LoadedModel,
    generative: AmberData,
    stages: Stages,
    max_new_tokens: int = 48,
    batch_size: int = 32,
    alpha: float = 1.0,
    progress: bool = True,
) -> dict[str, dict]:
    """Hallucination metrics of plain decoding vs mutation-layer handling and DoLa.

    Variants: ``plain``; ``skip2`` (mutation layers skipped); ``dola`` (premature layer
    chosen among the rapid-evolution and stabilisation layers 1..m-1); ``anchor`` (final
    log-probs plus ``alpha`` × those of the last pre-mutation layer m-1).

    Returns:
        ``{variant: {"chair", "cover", "hal", "cog", ..., "responses"}}``.
    """
    m = min(stages.first_mutation_layer, stages.n_layers)  # the last layer is the model's output
    variants: dict[str, dict] = {"plain": {}}
    if stages.mutation_layers:
        variants["skip2"] = {"skip": skip_preset(stages, "skip2")}
    premature = list(range(1, m))
    variants["dola"] = {"contrast": LayerContrast(loaded, premature, "dola")}
    variants["anchor"] = {"contrast": LayerContrast(loaded, [m - 1], "anchor", alpha)}
    results = {}
    for name, kw in variants.items():
        answers = _answer(
            generative,
            generative.queries,
            max_new_tokens,
            loaded=loaded,
            batch_size=batch_size,
            progress=progress,
            desc=name,
            **kw,
        )
        results[name] = {
            **score_generative(answers, generative).as_dict(),
            "responses": answers,
            "per_image": noun_counts(answers, generative),
        }
        if "skip" in kw:
            results[name]["skipped"] = kw["skip"]
    return results


def decoding_table(results: dict[str, dict]) -> dict[str, dict]:
    """Per variant, :func:`compare_decoding`'s metrics without the responses and counts."""
    return {
        name: {m: v for m, v in r.items() if m not in ("responses", "per_image")}
        for name, r in results.items()
    }
