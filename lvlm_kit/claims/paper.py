"""The paper's claims 1-15, each a statistic with its threshold, judged against controls.

One function per claim, registered with its number, sentence, figure and what the paper
reported (:func:`~lvlm_kit.claims.registry.paper_claim`). Thresholds are
:class:`~lvlm_kit.claims.core.ClaimConfig` fields.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..features import layer_spreads, shallow_and_deep
from ..stages import Stages, critical_split, detect_stages, js_after_embedding, token_kind
from ..tracing import Trace
from .core import (
    SPLIT_NOTE,
    ClaimConfig,
    ClaimResult,
    TraceSet,
    _mean_where,
    _pick,
    claim,
    label_null,
    relative,
    share_estimate,
    unmeasured,
)
from .registry import paper_claim

if TYPE_CHECKING:
    import pandas as pd

    from ..runs import PresetCounts


# ---- §3: token probabilities (Fig. 2) ----------------------------------------------------


@paper_claim(
    1,
    "token probabilities are near zero in shallow layers",
    "§3, Fig. 2",
    "≈ 0 before the critical layers",
)
def near_zero_shallow(
    model: TraceSet, controls: Mapping[str, TraceSet], cfg: ClaimConfig
) -> ClaimResult:
    """Claim 1: mean p(emitted) in layers 0..c-1 as a share of its mean at the last layer."""

    def make(ts: TraceSet):
        c = ts.stages.critical_layer
        probs = [t.token_prob.double().numpy() for t in ts.traces]

        def stat(idx):
            p = _pick(probs, idx)
            return float(p[:, :c].mean() / p[:, -1].mean()) if len(p) else math.nan

        return stat, [len(probs)]

    c, L = model.stages.critical_layer, model.stages.n_layers
    return claim(
        near_zero_shallow,
        "mean p(emitted) before the critical layer / at the last layer",
        "<=",
        cfg.near_zero_share,
        make,
        model,
        controls,
        cfg,
        notes=[f"critical layer {relative(c, L)}", SPLIT_NOTE],
    )


def _rise_window(c: int, n_layers: int, cfg: ClaimConfig) -> tuple[int, int]:
    """Lens layers ``(c - w, c + w)`` (clipped to 0..L), w a ``rise_window`` of the depth."""
    w = max(1, round(cfg.rise_window * n_layers))
    return max(c - w, 0), min(c + w, n_layers)


@paper_claim(
    2,
    "they rise sharply at the critical layers",
    "§3, Fig. 2",
    "layers ~18-20 of 32 (relative depth ~0.6)",
)
def sharp_rise(model: TraceSet, controls: Mapping[str, TraceSet], cfg: ClaimConfig) -> ClaimResult:
    """Claim 2: gain of the mean p(emitted) across a window around the critical layer.

    The window runs from ``rise_window`` of the depth before the critical layer to as far
    after it; a rise elsewhere (into the output layer, say) is not the paper's.
    """

    def make(ts: TraceSet):
        probs = [t.token_prob.double().numpy() for t in ts.traces]
        a, b = _rise_window(ts.stages.critical_layer, ts.stages.n_layers, cfg)

        def stat(idx):
            curve = _pick(probs, idx).mean(0)
            return float(curve[b] - curve[a]) if len(idx) else math.nan

        return stat, [len(probs)]

    curve = torch.cat([t.token_prob for t in model.traces]).double().mean(0).numpy()
    L = model.stages.n_layers
    steepest = int(np.argmax(np.diff(curve))) + 1
    a, b = _rise_window(model.stages.critical_layer, L, cfg)
    return claim(
        sharp_rise,
        "rise of mean p(emitted) across the critical layer's window",
        ">=",
        cfg.sharp_rise,
        make,
        model,
        controls,
        cfg,
        notes=[
            f"window: layers {a} to {b} around the critical layer "
            f"{relative(model.stages.critical_layer, L)}; the steepest one-layer "
            f"rise is into layer {relative(steepest, L)}",
            SPLIT_NOTE,
        ],
    )


def _class_rows(ts: TraceSet, value: Callable[[Trace, int], np.ndarray]) -> list[np.ndarray]:
    """Per judged image: rows ``[value, is a content token, token id]``.

    ``value(trace, first token index)`` gives the per-token measurement ``[tokens]``.
    """
    out, k = [], 0
    for t in ts.traces:
        content = np.array([token_kind(tok) == "content" for tok in t.tokens], float)
        out.append(np.stack([value(t, k), content, t.token_ids.double().numpy()], 1))
        k += t.n_tokens
    return out


def _class_contrast(rows: np.ndarray, cfg: ClaimConfig) -> float:
    """Mean of column 0 over content tokens minus over function tokens (NaN: too few words)."""
    if not _two_classes(rows, cfg):
        return math.nan
    content = rows[:, 1] > 0
    return _mean_where(rows[:, 0], content) - _mean_where(rows[:, 0], ~content)


def _contrast_claim(number, statistic, rule, threshold, rows_of, model, controls, cfg, notes=()):
    """A content − function contrast with its noise controls and a label-shuffle null."""

    def make(ts: TraceSet):
        per_image = rows_of(ts)
        stat = lambda idx: _class_contrast(_pick(per_image, idx).reshape(-1, 3), cfg)  # noqa: E731
        return stat, [len(per_image)]

    per_image = rows_of(model)
    whole = lambda rows: _class_contrast(np.concatenate(rows).reshape(-1, 3), cfg)  # noqa: E731
    null = lambda m: label_null(whole, per_image, 1, m, rule, cfg)  # noqa: E731
    return claim(
        number,
        statistic,
        rule,
        threshold,
        make,
        model,
        controls,
        cfg,
        notes=[*notes, SPLIT_NOTE],
        nulls={"labels shuffled": null},
    )


@paper_claim(
    3,
    "easy tokens settle after the critical layers, content tokens keep changing candidates",
    "§3, Fig. 2",
    "qualitative",
)
def content_keeps_changing(
    model: TraceSet, controls: Mapping[str, TraceSet], cfg: ClaimConfig
) -> ClaimResult:
    """Claim 3: top-1 switches after c per content token minus per function token."""

    def rows_of(ts: TraceSet) -> list[np.ndarray]:
        c = ts.stages.critical_layer

        def switches(t: Trace, _: int) -> np.ndarray:
            top1 = t.topk_ids[:, c:, 0]
            return (top1[:, 1:] != top1[:, :-1]).sum(1).double().numpy()

        return _class_rows(ts, switches)

    return _contrast_claim(
        content_keeps_changing,
        "top-1 switches after the critical layer: content − function tokens",
        ">=",
        cfg.switch_gap,
        rows_of,
        model,
        controls,
        cfg,
    )


# ---- §4: divergence and stages (Fig. 4) ---------------------------------------------------


def step_bic(curve: np.ndarray, eps: float = 1e-6) -> float:
    """How much better a step than a straight line explains ``log(curve + eps)`` (ΔBIC).

    The step is two flat segments at the best split (:func:`~lvlm_kit.stages.critical_split`,
    4 parameters with the split and the variance); the line is a smooth log-linear decay (3).
    Positive values favour the step; a step that goes up counts as its negative.

    Args:
        curve: ``[n]`` non-negative values.
        eps: log offset.

    Returns:
        ΔBIC, or NaN for fewer than 4 values.
    """
    x = np.log(np.asarray(curve, float) + eps)
    n = len(x)
    if n < 4:  # two segments of two points
        return math.nan
    j = np.arange(n)
    line = np.polyval(np.polyfit(j, x, 1), j)
    k = critical_split(torch.from_numpy(np.asarray(curve, float)), eps=eps)
    a, b = x[:k], x[k:]
    floor = 1e-12 * n  # an exact fit would give log(0)
    sse_line = max(float(((x - line) ** 2).sum()), floor)
    sse_step = max(float(((a - a.mean()) ** 2).sum() + ((b - b.mean()) ** 2).sum()), floor)
    delta = n * math.log(sse_line / sse_step) - (4 - 3) * math.log(n)
    return delta if a.mean() > b.mean() else -abs(delta)


@paper_claim(
    6,
    "adjacent-layer JS is large in shallow layers and small in deep layers",
    "§4, Fig. 4",
    "split near the critical layers",
)
def js_split(model: TraceSet, controls: Mapping[str, TraceSet], cfg: ClaimConfig) -> ClaimResult:
    """Claim 6: ΔBIC of a step over a log-linear fit to the mean adjacent-layer JS curve.

    The first pair (embedding -> first layer) is left out: its JS is large in every model,
    trained or not, and alone would make any curve look like a step.
    """

    def make(ts: TraceSet):
        js = [t.js[:, 1:].double().numpy() for t in ts.traces]
        return (lambda idx: step_bic(_pick(js, idx).mean(0))), [len(js)]

    curve = js_after_embedding(model.traces)
    k = critical_split(curve) + 1 if len(curve) >= 4 else 0  # pair k: layer k to k + 1
    return claim(
        js_split,
        "ΔBIC, step over log-linear fit of mean adjacent-layer JS (embedding step left out)",
        ">=",
        cfg.step_bic,
        make,
        model,
        controls,
        cfg,
        notes=[f"best step: layer {relative(k, model.stages.n_layers)}", SPLIT_NOTE],
    )


def _two_classes(rows: np.ndarray, cfg: ClaimConfig) -> bool:
    """Whether rows ``[..., is content, token id]`` hold enough distinct words of each class."""
    if not len(rows):
        return False
    content = rows[:, 1] > 0
    return min(len(set(rows[content, 2])), len(set(rows[~content, 2]))) >= cfg.min_distinct_words


def _mutated(ts: TraceSet) -> Callable[[Trace, int], np.ndarray]:
    """Per-token "has a deep mutation (a JS event)" of ``ts``'s judged traces."""
    return lambda t, k: np.array(
        [bool(m) for m in ts.stages.token_mutations[k : k + t.n_tokens]], float
    )


@paper_claim(
    7,
    "entity tokens' JS rises again in deep layers",
    "§4, Fig. 4",
    "qualitative",
)
def entities_rise_again(
    model: TraceSet, controls: Mapping[str, TraceSet], cfg: ClaimConfig
) -> ClaimResult:
    """Claim 7: share of content tokens with a deep mutation minus that of function tokens."""
    return _contrast_claim(
        entities_rise_again,
        "share mutating in deep layers: content − function tokens",
        ">",
        cfg.more_often,
        lambda ts: _class_rows(ts, _mutated(ts)),
        model,
        controls,
        cfg,
    )


@paper_claim(
    8,
    "three stages: rapid evolution, stabilisation, mutation",
    "§4",
    "found in LLaVA-1.5-7B",
)
def three_stages(
    model: TraceSet, controls: Mapping[str, TraceSet], cfg: ClaimConfig
) -> ClaimResult:
    """Claim 8: share of disjoint groups of images in which three stages are found.

    Each group of ``cfg.stage_group`` judged images gets its own stage detection; a share of
    all-or-nothing groups has an exact (Clopper-Pearson) interval.
    """

    def found(ts: TraceSet) -> list[bool]:
        g = cfg.stage_group
        groups = [ts.traces[i : i + g] for i in range(0, len(ts.traces) - g + 1, g)]
        out = []
        for group in groups:
            st = detect_stages(group, ts.stages.config)
            stable = st.first_mutation_layer > st.critical_layer + 1
            out.append(st.has_split and bool(st.mutation_layers) and stable)
        return out

    st = model.detection
    return claim(
        three_stages,
        f"three stages found (share of groups of {cfg.stage_group} images)",
        ">=",
        cfg.stages_found,
        None,
        model,
        controls,
        cfg,
        notes=[
            f"critical layer {relative(st.critical_layer, st.n_layers)}, mutation "
            f"layers {st.mutation_layers} on the detection half",
            SPLIT_NOTE,
        ],
        estimator=lambda ts: share_estimate(found(ts), ">=", cfg.stages_found, cfg),
    )


# ---- §3: hallucinated tokens (Fig. 3) ------------------------------------------------------


@dataclass
class LabelledTokens:
    """Object tokens of one model's descriptions: per judged image, labels and measurements.

    Rows per image: ``[is hallucinated, has a deep mutation, an annotated object led it
    after the critical layer]`` (the last is NaN where no other object is annotated).
    """

    per_image: list[np.ndarray]
    critical_layer: int  # detected on the other half of the images


def labelled_tokens(
    events: pd.DataFrame, traces: Sequence[Trace], cfg: ClaimConfig
) -> LabelledTokens:
    """Rows for claims 4-5 from :func:`~lvlm_kit.runs.object_token_events`.

    The stages are detected on the images at even positions; the object tokens of the
    others are judged (see :class:`TraceSet`).

    Args:
        events: one row per object token (``image`` index into ``traces``, ``step``,
            ``label``, ``truth_lead``).
        traces: the plain traces, in image order.
        cfg: the configuration (``lead_min_p``).
    """
    ts = TraceSet.of(traces)
    c, L = ts.stages.critical_layer, ts.stages.n_layers
    judged = {2 * j + 1: j for j in range(len(ts.traces))}  # image index -> judged index
    start = np.cumsum([0] + [t.n_tokens for t in ts.traces])
    per_image: list[list[list[float]]] = [[] for _ in ts.traces]
    for e in events.itertuples():
        if e.image not in judged:
            continue
        j = judged[e.image]
        lead = np.asarray(e.truth_lead, float)[c:L]  # layers c..L-1: before the output
        led = math.nan if np.isnan(lead).all() else float((lead >= cfg.lead_min_p).any())
        mutated = bool(ts.stages.token_mutations[start[j] + e.step])
        per_image[j].append([e.label == "hallucinated", mutated, led])
    return LabelledTokens([np.array(rows, float).reshape(-1, 3) for rows in per_image], c)


def _label_difference(rows: np.ndarray, column: int) -> float:
    """Mean of ``column`` over hallucinated rows minus over correct rows (NaN: a class missing)."""
    rows = rows[~np.isnan(rows[:, column])]
    h = rows[:, 0] > 0
    return _mean_where(rows[:, column], h) - _mean_where(rows[:, column], ~h)


@paper_claim(
    4,
    "hallucinated tokens jump in deep layers more often than correct tokens",
    "§3, Fig. 3",
    "qualitative (examples)",
)
def hallucinations_mutate(
    model: LabelledTokens, controls: Mapping[str, LabelledTokens], cfg: ClaimConfig
) -> ClaimResult:
    """Claim 4: share of hallucinated tokens with a deep mutation minus correct ones'.

    A label-shuffle null (hallucinated / correct swapped at random within each image) says
    how large a difference the images alone give.
    """

    def make(data: LabelledTokens):
        stat = lambda idx: _label_difference(_pick(data.per_image, idx).reshape(-1, 3), 1)  # noqa: E731
        return stat, [len(data.per_image)]

    whole = lambda rows: _label_difference(np.concatenate(rows).reshape(-1, 3), 1)  # noqa: E731
    null = lambda m: label_null(whole, model.per_image, 0, m, ">", cfg)  # noqa: E731
    return claim(
        hallucinations_mutate,
        "share with a deep mutation: hallucinated − correct object tokens",
        ">",
        cfg.more_often,
        make,
        model,
        controls,
        cfg,
        notes=[SPLIT_NOTE],
        nulls={"labels shuffled": null},
    )


@paper_claim(
    5,
    "before the jump the correct token often leads, then falls",
    "§3, Fig. 3",
    "qualitative (examples)",
)
def correct_leads_first(
    model: LabelledTokens, controls: Mapping[str, LabelledTokens], cfg: ClaimConfig
) -> ClaimResult:
    """Claim 5: hallucinated tokens often had an annotated object ahead, more than correct ones.

    Per object token: did an object that is in the image (not the emitted one) have a
    higher lens probability (at least ``lead_min_p``) at some layer from the critical layer
    to the one before the output? The statistic is the smaller margin of "often" (the
    hallucinated share minus ``often``) and "more than for correct tokens" (the hallucinated
    share minus the correct share): above 0 when both hold.
    """

    def make(data: LabelledTokens):
        def stat(idx):
            rows = _pick(data.per_image, idx).reshape(-1, 3)
            rows = rows[~np.isnan(rows[:, 2])]
            h = rows[:, 0] > 0
            share_h = _mean_where(rows[:, 2], h)
            return float(np.min([share_h - cfg.often, _label_difference(rows, 2)]))

        return stat, [len(data.per_image)]

    return claim(
        correct_leads_first,
        "min(share of hallucinated tokens an annotated object led − often, "
        "that share − the correct tokens' share)",
        ">",
        0.0,
        make,
        model,
        controls,
        cfg,
        notes=[SPLIT_NOTE],
    )


# ---- §4: skipping (Fig. 5) ------------------------------------------------------------------


def preset_layers(stages: Stages, cfg: ClaimConfig, seed: int = 0) -> dict[str, list[list[int]]]:
    """Decoder layers each decoding skips: the presets and their random counterparts.

    Args:
        stages: stages detected on images other than those the presets are judged on.
        cfg: ``random_skips`` random sets per preset.
        seed: seed of the random sets.

    Returns:
        Name -> layer sets: ``{"skip1": [[...]], ..., "random.skip1": [[...], ...]}``; each
        random set has as many layers as its preset, drawn from the decoder layers after
        the critical layer (c .. L-1). Presets the stages leave undefined are absent.
    """
    from ..stages import PRESETS, skip_preset

    rng = np.random.default_rng(seed)
    deep = np.arange(stages.critical_layer, stages.n_layers)
    out: dict[str, list[list[int]]] = {}
    for name in PRESETS:
        try:
            layers = skip_preset(stages, name)
        except ValueError:
            continue
        out[name] = [layers]
        out[f"random.{name}"] = [
            sorted(int(i) for i in rng.choice(deep, len(layers), replace=False))
            for _ in range(cfg.random_skips)
        ]
    return out


@paper_claim(
    9,
    "skip.1 (drop the stable middle) keeps the output",
    "§4, Fig. 5",
    "output almost unchanged, hallucinations included",
)
def skip1_keeps(
    model: PresetCounts, controls: Mapping[str, PresetCounts], cfg: ClaimConfig
) -> ClaimResult:
    """Claim 9: mean word overlap of skip.1's output with plain decoding."""

    def make(c: PresetCounts):
        return (lambda idx: float(c.overlap["skip1"][idx].mean())), [len(c.overlap["skip1"])]

    return _preset_claim(
        skip1_keeps,
        "word overlap of skip.1 with plain decoding",
        ">=",
        cfg.keeps_output,
        make,
        model,
        controls,
        cfg,
        ("skip1",),
    )


@paper_claim(
    10,
    "skip.2 (skip the mutation layers) removes some hallucinations",
    "§4, Fig. 5",
    "hallucination corrected in the example",
)
def skip2_fewer(
    model: PresetCounts, controls: Mapping[str, PresetCounts], cfg: ClaimConfig
) -> ClaimResult:
    """Claim 10: fewer hallucinations with the mutation layers skipped, no fewer real objects.

    ``min(CHAIR plain − CHAIR skip.2, Cover skip.2 − Cover plain + cover_kept)``: above 0
    when skip.2 hallucinates less and still names the image's objects (a model that names
    one noun has no hallucination either).
    """

    def make(c: PresetCounts):
        def stat(idx):
            fewer = c.counts["plain"].chair_of(idx) - c.counts["skip2"].chair_of(idx)
            kept = (
                c.counts["skip2"].cover_of(idx) - c.counts["plain"].cover_of(idx) + cfg.cover_kept
            )
            return float(np.min([fewer, kept]))

        return stat, [len(c.counts["plain"])]

    return _preset_claim(
        skip2_fewer,
        "min(CHAIR plain − CHAIR skip.2, Cover change + cover_kept)",
        ">",
        cfg.fewer_hallucinations,
        make,
        model,
        controls,
        cfg,
        ("skip2",),
    )


@paper_claim(
    11,
    "skip.3 (critical layers to the last few) hallucinates more than the original output",
    "§4, Fig. 5",
    "more hallucinations than the original output",
)
def skip3_more(
    model: PresetCounts, controls: Mapping[str, PresetCounts], cfg: ClaimConfig
) -> ClaimResult:
    """Claim 11: CHAIR with skip.3 minus CHAIR of plain decoding."""

    def make(c: PresetCounts):
        def stat(idx):
            return c.counts["skip3"].chair_of(idx) - c.counts["plain"].chair_of(idx)

        return stat, [len(c.counts["plain"])]

    return _preset_claim(
        skip3_more,
        "CHAIR skip.3 − CHAIR plain",
        ">",
        cfg.fewer_hallucinations,
        make,
        model,
        controls,
        cfg,
        ("skip3",),
    )


def _preset_claim(number, statistic, rule, threshold, make, model, controls, cfg, needs):
    """A skip claim on the model, its controls (skipping the model's layers), random skips."""

    def has(c: PresetCounts | None) -> bool:
        return c is not None and all(n in c.counts for n in needs)

    if not has(model):
        why = f"the detected stages define no {' / '.join(needs)} preset"
        return unmeasured(
            number, statistic, f"{rule} {threshold:g}", controls, "inconclusive", [why]
        )
    controls = {**controls, "random skips": model.random_skips()}
    return claim(
        number,
        statistic,
        rule,
        threshold,
        make,
        model,
        {k: c if has(c) else None for k, c in controls.items()},
        cfg,
        notes=[
            "stages detected on the images at even positions, the presets judged "
            "on the others; the controls skip the model's layers; random skips: "
            f"{cfg.random_skips} random sets of as many layers after the critical "
            "layer"
        ],
    )


# ---- §5: features (Figs. 6-7) ---------------------------------------------------------------


@paper_claim(
    12,
    "one image's tokens cluster in the first layers and diverge with depth",
    "§5, Fig. 6",
    "qualitative (t-SNE)",
)
def tokens_diverge(
    model: np.ndarray, controls: Mapping[str, np.ndarray], cfg: ClaimConfig
) -> ClaimResult:
    """Claim 12: 2-D spread of the deep half of the layers over that of layers 1-2.

    Args:
        model: ``[tokens, layers 1..L, 2]`` projected features of one image's tokens.
        controls: control name -> the same for that noise control.
        cfg: the configuration.
    """

    def make(xy: np.ndarray):
        def stat(idx):
            shallow, deep = shallow_and_deep(layer_spreads(xy[idx]), 2)
            return deep / max(shallow, 1e-12)

        return stat, [xy.shape[0]]

    return claim(
        tokens_diverge,
        "t-SNE spread, deep half / layers 1-2 (tokens resampled)",
        ">=",
        cfg.diverge_ratio,
        make,
        model,
        controls,
        cfg,
    )


@paper_claim(
    13,
    "VQA answer features: a tight shallow neck, a deep fan",
    "§5, Fig. 7",
    "qualitative (t-SNE)",
)
def vqa_fan(
    model: Mapping[str, np.ndarray],
    controls: Mapping[str, Mapping[str, np.ndarray]],
    cfg: ClaimConfig,
) -> ClaimResult:
    """Claim 13: answer-token spread of the deep half over the first quarter of the layers.

    One projection per question (the paper's Fig. 7 has one panel per question): the ratio
    is taken within each question and averaged over the questions; images are resampled
    within each question.

    Args:
        model: question -> ``[images, layers 1..L, 2]`` answer-token features projected
            for that question alone.
        controls: control name -> the same for that noise control.
        cfg: the configuration.
    """

    def make(per_question: Mapping[str, np.ndarray]):
        arrays = list(per_question.values())

        def stat(*idx):
            ratios = []
            for xy, i in zip(arrays, idx):
                shallow, deep = shallow_and_deep(layer_spreads(xy[i]), max(1, xy.shape[1] // 4))
                ratios.append(deep / max(shallow, 1e-12))
            return float(np.mean(ratios))

        return stat, [xy.shape[0] for xy in arrays]

    n = len(model)
    return claim(
        vqa_fan,
        f"t-SNE spread, deep half / first quarter of the layers (mean of {n} "
        "questions, one projection each)",
        ">=",
        cfg.diverge_ratio,
        make,
        model,
        controls,
        cfg,
    )


# ---- §6: the LLM alone, compression ---------------------------------------------------------


@paper_claim(
    14,
    "the text-only LLM mutates less than the LVLM",
    "§6",
    "no clear mutation in the LLM",
)
def llm_fewer_mutations(
    model: tuple[TraceSet, TraceSet],
    controls: Mapping[str, tuple[TraceSet, TraceSet]],
    cfg: ClaimConfig,
) -> ClaimResult:
    """Claim 14: share of tokens with a deep mutation, LVLM minus the LLM alone.

    Each side is ``(LVLM traces, LLM traces)``; images and prompts are resampled apart.
    """

    def make(pair: tuple[TraceSet, TraceSet]):
        lvlm, llm = (_class_rows(ts, _mutated(ts)) for ts in pair)

        def stat(i, j):
            a, b = _pick(lvlm, i).reshape(-1, 3), _pick(llm, j).reshape(-1, 3)
            return float(a[:, 0].mean() - b[:, 0].mean()) if len(a) and len(b) else math.nan

        return stat, [len(lvlm), len(llm)]

    return claim(
        llm_fewer_mutations,
        "share of tokens mutating: LVLM − LLM",
        ">",
        cfg.more_often,
        make,
        model,
        controls,
        cfg,
        notes=[SPLIT_NOTE],
    )


@dataclass
class SweepAnswers:
    """Per image, the share of its existence questions answered correctly.

    Unskipped (``base``) and with the k most stable layers skipped; ``[images]`` each.
    """

    k: int
    base: np.ndarray
    skipped: np.ndarray


def compression_k(n_layers: int, cfg: ClaimConfig) -> int:
    """Layers claim 15 skips: ``compression_depth`` of the depth, rounded, at least one."""
    return max(1, round(cfg.compression_depth * n_layers))


def sweep_answers(points: Sequence[Any], k: int) -> SweepAnswers | None:
    """Claim 15's data from a :func:`~lvlm_kit.applications.compression_sweep` run.

    Compares k = 0 with ``k`` (:func:`compression_k`); per image, the share of its existence
    questions answered correctly.

    Returns:
        The answers, or None when the sweep has no ``k`` point (the stabilisation stage
        holds fewer than ``k`` layers).

    Raises:
        ValueError: the sweep has no k = 0 point, or asked no existence question.
    """
    by_k = {p.k: p for p in points}
    if 0 not in by_k:
        raise ValueError("claim 15 compares with k = 0; the sweep has no k = 0 point.")
    if k not in by_k:
        return None
    base, last = by_k[0], by_k[k]
    if base.existence_correct is None:
        raise ValueError("the sweep asked no existence questions; pass `discriminative` data.")
    images = sorted(base.existence_correct)
    return SweepAnswers(
        k=k,
        base=np.array([np.mean(base.existence_correct[i]) for i in images]),
        skipped=np.array([np.mean(last.existence_correct[i]) for i in images]),
    )


@paper_claim(
    15,
    "skipping stable layers compresses the model at little cost",
    "§6",
    "little accuracy lost",
)
def compression(
    model: SweepAnswers | None,
    controls: Mapping[str, SweepAnswers | None],
    cfg: ClaimConfig,
    n_layers: int | None = None,
) -> ClaimResult:
    """Claim 15: the smaller margin of "little accuracy lost" and "accuracy to lose".

    ``min(acc_k − acc_0 + little_cost, acc_0 − min_accuracy)``: at least 0 when skipping the k
    most stable layers (k from :func:`compression_k`) costs at most ``little_cost`` of an
    accuracy of at least ``min_accuracy`` (a model that answers at chance has nothing to
    compress). The controls skip the model's layers.

    Args:
        model: from :func:`sweep_answers`; None when the stabilisation stage holds fewer
            than k layers (the claim is then not shown).
        controls: control name -> the same for that noise control.
        cfg: the configuration.
        n_layers: the model's depth L, to name k when ``model`` is None.
    """
    if model is None:
        k = compression_k(n_layers or 0, cfg)
        return unmeasured(
            compression,
            f"accuracy margin with the {k} most stable layers skipped",
            ">= 0",
            controls,
            "not shown",
            [
                f"the detected stabilisation stage holds fewer than {k} layers "
                f"({cfg.compression_depth:g} of the depth): there are not that many "
                "stable layers to skip"
            ],
            holds="no",
        )

    def make(a: SweepAnswers):
        def stat(idx):
            acc0, acck = a.base[idx].mean(), a.skipped[idx].mean()
            return float(min(acck - acc0 + cfg.little_cost, acc0 - cfg.min_accuracy))

        return stat, [len(a.base)]

    return claim(
        compression,
        f"accuracy margin with the {model.k} most stable layers skipped",
        ">=",
        0.0,
        make,
        model,
        controls,
        cfg,
        notes=[
            f"existence accuracy {model.base.mean():.3f} unskipped, "
            f"{model.skipped.mean():.3f} with {model.k} layers skipped"
        ],
    )
