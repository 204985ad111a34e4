"""The paper's claims as statistics with confidence intervals, checked against noise controls.

Each claim of the paper is one function here. It turns what a notebook measured into one
number (the *statistic*), compares it with a threshold that says in numbers what the
paper says in words (every threshold is a field of :class:`ClaimConfig`), and gives a
bootstrap 95% confidence interval over the units that were sampled (images, or tokens of
the one image of §5; an exact Clopper-Pearson interval for a share of all-or-nothing
units). The same analysis on controls is part of every verdict:

- noise controls of the model (:func:`controls`): a re-initialised copy, and a copy whose
  weights are permuted inside each tensor (the model's own weight norms and spectra), and
  for claims about where in the depth something happens a copy whose layers run in a
  shuffled order (:func:`layer_shuffled_control`),
  teacher-forced on the model's tokens where a statistic needs its words
  (:func:`control_traces`), and skipping the model's layers where a claim is about skips;
- for a contrast of token classes (claims 3, 4, 7), a null with the labels shuffled within
  each image (:func:`label_null`);
- for the skip claims (9-11), the model with random sets of as many layers skipped.

Stages are detected on one half of the images and the claims about them judged on the
other (:class:`TraceSet`), so that the detector does not confirm what it found.

- ``shown``: the interval lies on the claim's side of the threshold on the model, and
  every control's interval lies on the other side (a null's range lies below the model's
  interval);
- ``not shown``: the interval lies on the other side on the model, or a control shows it
  as well (a statistic that holds on noise says nothing);
- ``inconclusive``: the model's interval straddles the threshold (more images would
  tell), the statistic cannot be computed, or the model shows it and a control's interval
  straddles the threshold (noise might show it too);
- ``inconclusive (no control)``: the model shows it, but a control is missing or has no
  value (for example no function words on random weights): without a control there is
  nothing the model was shown to beat.

Layers are lens layers 0..L (0 is the embedding output); claims that name a layer also give
it as relative depth j / L, so the testbed's 3 of 12 reads beside the paper's ~18-20 of 32.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from .compare import Comparison
from .data import AmberData
from .loading import LoadedModel
from .stages import Stages, critical_split, detect_stages, token_kind
from .trace import Trace

if TYPE_CHECKING:
    import pandas as pd

#: Added to the seed of :func:`random_control` and :func:`permuted_control`.
CONTROL_SEED_OFFSET = 7919
#: The noise controls every paper claim is measured on (:func:`controls`).
CONTROL_KINDS: tuple[str, ...] = ("re-initialised", "permuted")

Holds = Literal["yes", "no", "inconclusive"]
Verdict = Literal["shown", "not shown", "inconclusive", "inconclusive (no control)"]
VERDICTS: tuple[str, ...] = ("shown", "not shown", "inconclusive", "inconclusive (no control)")


@dataclass(frozen=True)
class ClaimConfig:
    """Thresholds of the claims (what the paper's words mean here) and the bootstrap."""

    n_boot: int = 1000  # bootstrap resamples
    n_boot_stages: int = 100  # resamples for claims that re-detect the stages each time
    level: float = 0.95  # confidence level of the intervals
    seed: int = 0  # seed of the resampling
    # 1: "near zero" in shallow layers: under a tenth of the probability it ends with.
    near_zero_share: float = 0.1
    # 2: a "sharp" rise "at the critical layers": the mean probability gains at least this
    # much ...
    sharp_rise: float = 0.3
    # ... between rise_window of the depth (at least one layer) before the critical layer
    # and as far after it.
    rise_window: float = 0.1
    # 3: content tokens "keep changing candidates": at least half a top-1 switch more per
    # token after the critical layer than function tokens.
    switch_gap: float = 0.5
    # 3, 7: a comparison of word classes needs at least this many distinct words in each
    # (a random-weight model repeating "sun." compares two words, not two classes).
    min_distinct_words: int = 3
    # 3, 4, 7: label shuffles within each image for the permutation null of a class contrast.
    n_shuffles: int = 200
    # 4, 7, 14: "more often": a difference of shares above zero.
    more_often: float = 0.0
    # 5: "often": more than half of the hallucinated tokens had an object of the image ahead
    # of them (with at least this probability) after the critical layer, and more of them
    # than of the correct object tokens.
    often: float = 0.5
    lead_min_p: float = 0.05
    # 6: "large" shallow vs "small" deep JS: a step (two flat segments) explains the mean
    # log JS curve better than a smooth log-linear decay by at least this much BIC
    # ("very strong" evidence on Kass & Raftery's scale).
    step_bic: float = 10.0
    # 8: three stages are found in at least this share of disjoint groups of images ...
    stages_found: float = 0.5
    # ... of this many images each.
    stage_group: int = 3
    # 9: "keeps the output": word overlap with plain decoding at least this.
    keeps_output: float = 0.8
    # 10, 11: "removes some" / "more" hallucinations: a CHAIR difference above zero ...
    fewer_hallucinations: float = 0.0
    # ... 10: without naming real objects less often (Cover may drop by at most this).
    cover_kept: float = 0.05
    # 9-11: random sets of as many deep layers (after the critical layer) skipped instead.
    random_skips: int = 3
    # 12, 13: "diverge" / "fan out": the spread grows at least two-fold.
    diverge_ratio: float = 2.0
    # 15: skip this share of the layers (rounded; at least one) ...
    compression_depth: float = 0.25
    # ... "at little cost": existence accuracy drops by at most this ...
    little_cost: float = 0.05
    # ... from an unskipped accuracy of at least this (chance is 0.5).
    min_accuracy: float = 0.75
    # 16-20, the kit's checks of a quantized run against full precision:
    # 16: "says the same": at least this share of the reference's tokens, in order.
    same_tokens: float = 0.9
    # 17: "the same lens": the worst layer's mean KL(full || quantized) at most this (nats).
    lens_close: float = 0.1
    # 18: "the same JS curve": mean correlation of the per-image curves at least this.
    js_kept: float = 0.9
    # 19: "the same stages": critical and first mutation layer move at most this many layers.
    stages_kept: float = 1.0
    # 20: "hallucinates as often": CHAIR and Cover each change by at most this.
    hallucination_kept: float = 0.05


@dataclass
class Estimate:
    """A statistic on one model: value, bootstrap interval, and whether the rule holds."""

    value: float
    low: float
    high: float
    holds: Holds
    n: int  # units resampled (images, or tokens)

    def text(self) -> str:
        """``0.123 [0.100, 0.150]``."""
        if math.isnan(self.value):
            return "n/a"
        return f"{self.value:.3g} [{self.low:.3g}, {self.high:.3g}]"


@dataclass
class ClaimResult:
    """One claim of the paper, measured on a model and on its noise controls."""

    number: int
    key: str
    paper: str  # the paper's sentence
    figure: str  # section and figure
    paper_number: str  # what the paper reported
    statistic: str  # what is measured
    rule: str  # the statistic's threshold, e.g. ">= 10"
    model: Estimate
    controls: dict[str, Estimate | None]  # control name -> estimate (None: not measurable)
    verdict: Verdict
    notes: list[str] = field(default_factory=list)

    def controls_text(self) -> str:
        """``re-initialised 0.6 [0.5, 0.7]; permuted n/a``."""
        return control_text(self.controls)

    def sentence(self) -> str:
        """One line a notebook prints."""
        return (
            f"Claim {self.number} ({self.figure}) {self.paper} — {self.statistic} = "
            f"{self.model.text()} (rule {self.rule}; controls: {self.controls_text()}): "
            f"{self.verdict.upper()}."
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


#: The claims: number -> (key, sentence, section/figure, what the paper reported). 1-15 are
#: the paper's; 16-20 are the kit's checks that a quantized run shows the same picture; 21
#: is the kit's own, on the image tokens.
PAPER: dict[int, tuple[str, str, str, str]] = {
    1: (
        "near_zero_shallow",
        "token probabilities are near zero in shallow layers",
        "§3, Fig. 2",
        "≈ 0 before the critical layers",
    ),
    2: (
        "sharp_rise",
        "they rise sharply at the critical layers",
        "§3, Fig. 2",
        "layers ~18-20 of 32 (relative depth ~0.6)",
    ),
    3: (
        "content_keeps_changing",
        "easy tokens settle after the critical layers, content tokens keep changing candidates",
        "§3, Fig. 2",
        "qualitative",
    ),
    4: (
        "hallucinations_mutate",
        "hallucinated tokens jump in deep layers more often than correct tokens",
        "§3, Fig. 3",
        "qualitative (examples)",
    ),
    5: (
        "correct_leads_first",
        "before the jump the correct token often leads, then falls",
        "§3, Fig. 3",
        "qualitative (examples)",
    ),
    6: (
        "js_split",
        "adjacent-layer JS is large in shallow layers and small in deep layers",
        "§4, Fig. 4",
        "split near the critical layers",
    ),
    7: (
        "entities_rise_again",
        "entity tokens' JS rises again in deep layers",
        "§4, Fig. 4",
        "qualitative",
    ),
    8: (
        "three_stages",
        "three stages: rapid evolution, stabilisation, mutation",
        "§4",
        "found in LLaVA-1.5-7B",
    ),
    9: (
        "skip1_keeps",
        "skip.1 (drop the stable middle) keeps the output",
        "§4, Fig. 5",
        "output almost unchanged, hallucinations included",
    ),
    10: (
        "skip2_fewer",
        "skip.2 (skip the mutation layers) removes some hallucinations",
        "§4, Fig. 5",
        "hallucination corrected in the example",
    ),
    11: (
        "skip3_more",
        "skip.3 (critical layers to the last few) hallucinates more than the original output",
        "§4, Fig. 5",
        "more hallucinations than the original output",
    ),
    12: (
        "tokens_diverge",
        "one image's tokens cluster in the first layers and diverge with depth",
        "§5, Fig. 6",
        "qualitative (t-SNE)",
    ),
    13: (
        "vqa_fan",
        "VQA answer features: a tight shallow neck, a deep fan",
        "§5, Fig. 7",
        "qualitative (t-SNE)",
    ),
    14: (
        "llm_fewer_mutations",
        "the text-only LLM mutates less than the LVLM",
        "§6",
        "no clear mutation in the LLM",
    ),
    15: (
        "compression",
        "skipping stable layers compresses the model at little cost",
        "§6",
        "little accuracy lost",
    ),
    16: (
        "quant_same_tokens",
        "a quantized run generates the same tokens",
        "kit, 09",
        "not in the paper (run in fp16)",
    ),
    17: (
        "quant_lens_close",
        "a quantized run's lens distributions match full precision",
        "kit, 09",
        "not in the paper (run in fp16)",
    ),
    18: (
        "quant_js_kept",
        "a quantized run has the same adjacent-layer JS curve",
        "kit, 09",
        "not in the paper (run in fp16)",
    ),
    19: (
        "quant_stages_kept",
        "a quantized run has the same critical and mutation layers",
        "kit, 09",
        "not in the paper (run in fp16)",
    ),
    20: (
        "quant_hallucination_kept",
        "a quantized run hallucinates as often and names as many real objects",
        "kit, 09",
        "not in the paper (run in fp16)",
    ),
    21: (
        "image_tokens_decode",
        "the image tokens decode to the object in their cell",
        "kit, 10",
        "not in the paper (it decodes generated tokens only)",
    ),
}


# ---- the machinery ----------------------------------------------------------------------


def estimate(
    stat: Callable[..., float],
    sizes: Sequence[int],
    rule: str,
    threshold: float,
    cfg: ClaimConfig,
    n_boot: int | None = None,
) -> Estimate:
    """Value, percentile bootstrap interval and rule of ``stat`` over resampled units.

    Args:
        stat: maps one index array per group (``np.arange(size)`` for the full data) to the
            statistic; NaN where it cannot be computed.
        sizes: units per group (groups are resampled independently).
        rule: ``">="``, ``">"`` or ``"<="``: the side of ``threshold`` on which the claim
            holds (``">"`` for "more than": a difference of exactly 0 does not hold).
        threshold: the claim's threshold.
        cfg: bootstrap settings.
        n_boot: resamples (default ``cfg.n_boot``).

    Returns:
        The :class:`Estimate`; ``holds`` is ``"inconclusive"`` when the interval straddles
        the threshold, has fewer than two units, or any resample is undefined.
    """
    from scipy.stats import bootstrap

    full = [np.arange(n) for n in sizes]
    value = float(stat(*full))
    as_int = stat
    stat = lambda *idx: as_int(*(np.asarray(i, dtype=int) for i in idx))  # noqa: E731
    n = min(sizes) if sizes else 0
    if math.isnan(value) or n < 2:
        return Estimate(value, math.nan, math.nan, "inconclusive", n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate (constant) resamples are fine here
        res = bootstrap(
            tuple(full),
            stat,
            vectorized=False,
            paired=False,
            n_resamples=n_boot or cfg.n_boot,
            confidence_level=cfg.level,
            method="percentile",
            rng=np.random.default_rng(cfg.seed),
        )
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return Estimate(value, low, high, _holds(low, high, rule, threshold), n)


def _holds(low: float, high: float, rule: str, threshold: float) -> Holds:
    """Which side of ``threshold`` the interval ``[low, high]`` lies on."""
    if math.isnan(low) or math.isnan(high):
        return "inconclusive"
    above = low > threshold if rule == ">" else low >= threshold
    below = high <= threshold if rule == ">" else high < threshold
    if rule == "<=":
        above, below = high <= threshold, low > threshold
    return "yes" if above else "no" if below else "inconclusive"


def share_estimate(
    successes: Sequence[bool], rule: str, threshold: float, cfg: ClaimConfig
) -> Estimate:
    """A share of all-or-nothing units with its exact (Clopper-Pearson) interval.

    A percentile bootstrap of a share whose units all agree has zero width (12 of 12 gives
    [1, 1]); the exact binomial interval does not (12 of 12 gives [0.74, 1]).
    """
    from scipy.stats import binomtest

    k, n = int(np.sum(successes)), len(successes)
    if n < 2:
        return Estimate(k / n if n else math.nan, math.nan, math.nan, "inconclusive", n)
    ci = binomtest(k, n).proportion_ci(confidence_level=cfg.level, method="exact")
    low, high = float(ci.low), float(ci.high)
    return Estimate(k / n, low, high, _holds(low, high, rule, threshold), n)


def label_null(
    stat: Callable[[list[np.ndarray]], float],
    per_image: Sequence[np.ndarray],
    column: int,
    model: Estimate,
    rule: str,
    cfg: ClaimConfig,
) -> Estimate:
    """Permutation null of a class contrast: labels shuffled within each image.

    Args:
        stat: the statistic of per-image rows (all images).
        per_image: ``[tokens, columns]`` rows per image; ``column`` holds the class label.
        column: the label column to shuffle.
        model: the model's estimate (what the null is compared with).
        rule: the claim's rule.
        cfg: ``n_shuffles``, ``level`` and ``seed``.

    Returns:
        The null's mean and central ``level`` range of the shuffled statistics. ``holds``
        says whether the null shows the model's value too: ``"yes"`` when the model's value
        lies within the null's range, ``"no"`` when the model's whole interval lies beyond
        it on the claim's side, ``"inconclusive"`` otherwise.
    """
    rng = np.random.default_rng(cfg.seed)
    values = []
    for _ in range(cfg.n_shuffles):
        shuffled = []
        for rows in per_image:
            rows = rows.copy()
            rows[:, column] = rng.permutation(rows[:, column])
            shuffled.append(rows)
        values.append(stat(shuffled))
    values = np.array(values, float)
    values = values[~np.isnan(values)]
    if not len(values) or math.isnan(model.value):
        return Estimate(math.nan, math.nan, math.nan, "inconclusive", len(per_image))
    a = (1 - cfg.level) / 2
    low, high = (float(q) for q in np.quantile(values, [a, 1 - a]))
    if rule == "<=":
        beaten, within = model.high < low, model.value >= low
    else:
        beaten, within = model.low > high, model.value <= high
    holds: Holds = "no" if beaten else "yes" if within else "inconclusive"
    return Estimate(float(values.mean()), low, high, holds, len(per_image))


def decide(model: Estimate, controls: Mapping[str, Estimate | None]) -> Verdict:
    """Verdict from the model's and the controls' estimates (see the module docstring)."""
    if model.holds == "no":
        return "not shown"
    if model.holds == "inconclusive":
        return "inconclusive"
    measured = [c for c in controls.values() if c is not None and not math.isnan(c.value)]
    if any(c.holds == "yes" for c in measured):
        return "not shown"
    if not controls or len(measured) < len(controls):
        return "inconclusive (no control)"
    if any(c.holds == "inconclusive" for c in measured):
        return "inconclusive"  # noise might show it too
    return "shown"


def control_text(controls: Mapping[str, Estimate | dict | None]) -> str:
    """``re-initialised 0.6 [0.5, 0.7]; permuted n/a`` (estimates or their dicts)."""
    if not controls:
        return "none"
    parts = []
    for name, e in controls.items():
        e = Estimate(**e) if isinstance(e, dict) else e
        parts.append(f"{name} {e.text() if e is not None else 'n/a'}")
    return "; ".join(parts)


def claim(
    number: int,
    statistic: str,
    rule: str,
    threshold: float,
    make: Callable[[Any], tuple[Callable[..., float], Sequence[int]]] | None,
    model_data: Any,
    controls: Mapping[str, Any],
    cfg: ClaimConfig,
    n_boot: int | None = None,
    notes: Sequence[str] = (),
    nulls: Mapping[str, Callable[[Estimate], Estimate]] | None = None,
    estimator: Callable[[Any], Estimate] | None = None,
) -> ClaimResult:
    """Measure one claim on the model and its controls with the same analysis.

    Args:
        number: the claim's number in :data:`PAPER`.
        statistic: what is measured, in words.
        rule: ``">="``, ``">"`` or ``"<="``.
        threshold: the claim's threshold (a :class:`ClaimConfig` field).
        make: turns one model's data into ``(stat, sizes)`` for :func:`estimate` (None
            with ``estimator``).
        model_data: what was measured on the model.
        controls: control name -> the same measured on that control (None when the
            analysis does not exist there: the verdict is then at best ``inconclusive (no
            control)``), or an :class:`Estimate` already compared with the model (a null
            such as :func:`label_null`).
        cfg: the configuration.
        n_boot: resamples, if not ``cfg.n_boot``.
        notes: extra lines for the report.
        nulls: null name -> a function of the model's estimate giving the null's estimate
            (e.g. :func:`label_null`); reported and decided beside the controls.
        estimator: turns one model's data into its :class:`Estimate` directly, instead of
            the bootstrap of ``make`` (e.g. an exact interval, :func:`share_estimate`).
    """
    if not isinstance(controls, Mapping):
        raise TypeError(
            "controls must map a control's name to its data, e.g. {'re-initialised': ..., "
            "'permuted': ...} (see claims.controls)."
        )
    key, paper, figure, paper_number = PAPER[number]

    def measure(data: Any) -> Estimate:
        if estimator is not None:
            return estimator(data)
        return estimate(*make(data), rule, threshold, cfg, n_boot)

    model = measure(model_data)
    controls = {**controls, **{name: f(model) for name, f in (nulls or {}).items()}}
    estimates: dict[str, Estimate | None] = {}
    notes = list(notes)
    for name, data in controls.items():
        cache = getattr(data, "estimates", None)  # a control shared by several claims
        if data is None or isinstance(data, Estimate):  # not measurable, or a null
            estimates[name] = data
        elif cache is not None and (number, cfg) in cache:
            estimates[name] = cache[(number, cfg)]
        else:
            estimates[name] = measure(data)
            if cache is not None:
                cache[(number, cfg)] = estimates[name]
        e = estimates[name]
        if e is None or math.isnan(e.value):
            notes.append(
                f"the {name} control has no value for this statistic, so the model "
                "was not shown to beat it"
            )
        elif e.holds == "yes" and isinstance(data, Estimate):
            notes.append(f"{name} gives as large a value: the contrast is not beyond chance")
        elif e.holds == "yes":
            notes.append(f"the statistic holds on the {name} control too, so it says nothing")
        elif e.holds == "inconclusive":
            notes.append(
                f"on the {name} control the interval straddles the threshold: noise "
                "might show it too"
            )
    if not controls:
        notes.append("no control was measured")
    return ClaimResult(
        number,
        key,
        paper,
        figure,
        paper_number,
        statistic,
        f"{rule} {threshold:g}",
        model,
        estimates,
        decide(model, estimates),
        notes,
    )


def random_control(loaded: LoadedModel, seed: int = 0) -> LoadedModel:
    """A random-weight copy of ``loaded``: same architecture and config, re-initialised.

    The processor (and so the tokenizer and image preprocessing) is shared. The seed is
    offset from ``seed`` so that a model that is itself a seeded random initialisation
    (a test model, say) never gets an identical control.

    Raises:
        RuntimeError: the re-initialised weights equal the model's.
    """
    model = loaded.model
    torch.manual_seed(CONTROL_SEED_OFFSET + seed)
    fresh = _fresh_copy(loaded)
    if torch.equal(fresh.get_output_embeddings().weight, model.get_output_embeddings().weight):
        raise RuntimeError("the random-weight control equals the model; pass another seed.")
    return _loaded(loaded, fresh, "random")


def _fresh_copy(loaded: LoadedModel) -> torch.nn.Module:
    """A newly initialised model of ``loaded``'s class, config, dtype and device (eval mode)."""
    model = loaded.model
    fresh = type(model)(copy.deepcopy(model.config))
    fresh = fresh.to(dtype=model.dtype, device=loaded.input_device).eval()
    fresh.generation_config = copy.deepcopy(model.generation_config)
    return fresh


def _loaded(loaded: LoadedModel, control: torch.nn.Module, kind: str) -> LoadedModel:
    """``control`` as a :class:`LoadedModel` sharing ``loaded``'s processor."""
    from .anatomy import resolve_anatomy

    return LoadedModel(
        control, loaded.processor, resolve_anatomy(control), f"{loaded.name} ({kind})"
    )


def permuted_control(loaded: LoadedModel, seed: int = 0) -> LoadedModel:
    """A copy of ``loaded`` whose weights are permuted inside each tensor (seeded).

    Every parameter tensor keeps its own entries, shuffled: the same values, norms and
    spread as the trained model, with no learnt structure. A stronger negative control than
    re-initialisation, whose small, even weights leave the residual stream nearly
    unchanged from layer to layer. Buffers (rotary frequencies, position ids) are kept.
    Tied weights stay tied (each tensor is permuted once).

    Raises:
        ValueError: a quantized model (permute its full-precision checkpoint instead).
    """
    if loaded.quantization is not None:
        raise ValueError(
            f"permuted_control needs full-precision weights; {loaded.name} is "
            f"{loaded.quantization}. Load it without quantization for the control."
        )
    fresh = _fresh_copy(loaded)
    source = dict(loaded.model.named_parameters())
    gen = torch.Generator().manual_seed(CONTROL_SEED_OFFSET + seed)
    with torch.no_grad():
        for name, param in fresh.named_parameters():
            w = source[name].detach()
            perm = torch.randperm(w.numel(), generator=gen).to(w.device)
            param.copy_(w.reshape(-1)[perm].reshape(w.shape))
    return _loaded(loaded, fresh, "permuted")


def layer_shuffled_control(loaded: LoadedModel, seed: int = 0) -> LoadedModel:
    """A copy of ``loaded`` whose decoder layers run in a seeded random order.

    Every weight is the model's own, and each layer does what it learnt; only the order is
    lost. The control of a claim about where in the depth something happens (a rise at the
    critical layers, a step in the JS curve, three stages in sequence): what still holds
    with the layers shuffled is not about their order. The lens reads the layers in the
    order they run.

    Raises:
        ValueError: a quantized model, or one with fewer than two decoder layers.
    """
    from .anatomy import resolve_anatomy

    if loaded.quantization is not None:
        raise ValueError(
            f"layer_shuffled_control needs full-precision weights; {loaded.name} is "
            f"{loaded.quantization}. Load it without quantization for the control."
        )
    n = loaded.anatomy.n_layers
    if n < 2:
        raise ValueError(f"{loaded.name} has {n} decoder layer: there is no order to shuffle.")
    fresh = _fresh_copy(loaded)
    fresh.load_state_dict(loaded.model.state_dict())
    gen = torch.Generator().manual_seed(CONTROL_SEED_OFFSET + seed)
    order = list(range(n))
    while order == list(range(n)):
        order = torch.randperm(n, generator=gen).tolist()
    layers = resolve_anatomy(fresh).layers
    moved = [layers[i] for i in order]
    for j, layer in enumerate(moved):
        layers[j] = layer
    return _loaded(loaded, fresh, "layer-shuffled")


def controls(loaded: LoadedModel, seed: int = 0, order: bool = False) -> dict[str, LoadedModel]:
    """The noise controls of ``loaded``, by name (:data:`CONTROL_KINDS`).

    ``"re-initialised"`` (:func:`random_control`) and ``"permuted"``
    (:func:`permuted_control`): a claim is shown only when the model beats both. With
    ``order`` (claims about where in the depth something happens), also
    ``"layer-shuffled"`` (:func:`layer_shuffled_control`).
    """
    out = {
        "re-initialised": random_control(loaded, seed),
        "permuted": permuted_control(loaded, seed),
    }
    if order:
        out["layer-shuffled"] = layer_shuffled_control(loaded, seed)
    return out


def control_traces(
    loaded: LoadedModel,
    model_traces: Sequence[Trace],
    images: Sequence[Any],
    prompts: str | Sequence[str],
    seed: int = 0,
    progress: bool = True,
    forced: bool = True,
    order: bool = False,
    copies: Mapping[str, LoadedModel] | None = None,
    **trace_kw: Any,
) -> dict[str, list[Trace]]:
    """Each noise control of ``loaded`` (:func:`controls`) on the model's images and prompts.

    With ``forced`` (the default) the controls are teacher-forced (``trace(..., force=...)``)
    to emit the model's tokens, so their traces have the same words, word classes and
    objects, and every statistic of the model is defined on them (a random copy left to
    itself says "sun. sun. sun."). Statistics of the emitted token's own trajectory (claims
    1 and 2: its probability rising to the output) need ``forced=False``: a forced token is
    not the control's own prediction, so its last-layer probability is not comparable.

    Args:
        loaded: the model.
        model_traces: the model's traces, one per image.
        images: the images (None entries for text only), in the same order.
        prompts: one prompt, or one per image.
        seed: seed of the controls.
        progress: show progress bars.
        forced: emit the model's tokens; else each control generates greedily (with the
            model's ``max_new_tokens``).
        order: also the layer-shuffled control (:func:`controls`).
        copies: controls already built (name -> model), instead of building them here
            (``seed`` and ``order`` are then not used): one set of copies for several calls.
        **trace_kw: passed to :func:`~lvlm_kit.trace.trace` (``lens_norm``, ``keep_hidden``).

    Returns:
        Control name -> its traces, in image order.
    """
    from tqdm.auto import tqdm

    from .trace import trace

    prompts = [prompts] * len(images) if isinstance(prompts, str) else list(prompts)
    if not len(model_traces) == len(images) == len(prompts):
        raise ValueError(
            f"got {len(model_traces)} traces, {len(images)} images and {len(prompts)} prompts; "
            "pass one of each per image."
        )
    out = {}
    copies = controls(loaded, seed, order) if copies is None else copies
    for name, control in copies.items():
        out[name] = [
            trace(control, im, p, t.n_tokens, force=t.token_ids, **trace_kw)
            if forced
            else trace(control, im, p, t.meta.get("max_new_tokens", t.n_tokens), **trace_kw)
            for t, im, p in tqdm(
                list(zip(model_traces, images, prompts)), desc=name, disable=not progress
            )
        ]
    return out


def _pick(per_unit: Sequence[np.ndarray], idx: np.ndarray) -> np.ndarray:
    """Concatenate the rows of the chosen units (with repeats)."""
    return np.concatenate([per_unit[i] for i in idx]) if len(idx) else np.empty(0)


def _mean_where(values: np.ndarray, mask: np.ndarray) -> float:
    return float(values[mask].mean()) if mask.any() else math.nan


def relative(layer: int, n_layers: int) -> str:
    """``"3 of 12 (0.25)"``."""
    return f"{layer} of {n_layers} ({layer / n_layers:.2f})"


# ---- §3: token probabilities (Fig. 2) ----------------------------------------------------


@dataclass
class TraceSet:
    """Traces of one model, split in two: stages detected on one half, claims judged on the other.

    Detecting the stages and judging the claims about them on the same traces would let the
    detector find what it then confirms. :meth:`of` detects the critical layer on the images
    at even positions (``detection``) and keeps the others (``traces``), whose per-token
    events are measured at that critical layer (``stages``).
    """

    traces: list[Trace]  # the judged half
    stages: Stages  # on the judged half, at the detection half's critical layer
    detection: Stages  # detected on the other half

    @classmethod
    def of(cls, traces: Sequence[Trace]) -> TraceSet:
        """Split ``traces`` (even positions detect, odd positions are judged)."""
        traces = list(traces)
        if len(traces) < 2:
            raise ValueError(
                f"claims need at least 2 traces (one to detect the stages, one to judge), "
                f"got {len(traces)}; trace more images."
            )
        detection = detect_stages(traces[0::2])
        judged = traces[1::2]
        return cls(
            judged, detect_stages(judged, critical_layer=detection.critical_layer), detection
        )


#: Stated in every report of a claim judged on a :class:`TraceSet`.
SPLIT_NOTE = (
    "stages detected on the images at even positions, the claim judged on the others "
    "(for the model and each control)"
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
        1,
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
        2,
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
        3,
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


def js_split(model: TraceSet, controls: Mapping[str, TraceSet], cfg: ClaimConfig) -> ClaimResult:
    """Claim 6: ΔBIC of a step over a log-linear fit to the mean adjacent-layer JS curve.

    The first pair (embedding -> first layer) is left out: its JS is large in every model,
    trained or not, and alone would make any curve look like a step.
    """

    def make(ts: TraceSet):
        js = [t.js[:, 1:].double().numpy() for t in ts.traces]
        return (lambda idx: step_bic(_pick(js, idx).mean(0))), [len(js)]

    curve = torch.cat([t.js[:, 1:] for t in model.traces]).double().mean(0)
    k = critical_split(curve) + 1 if len(curve) >= 4 else 0  # pair k: layer k to k + 1
    return claim(
        6,
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


def entities_rise_again(
    model: TraceSet, controls: Mapping[str, TraceSet], cfg: ClaimConfig
) -> ClaimResult:
    """Claim 7: share of content tokens with a deep mutation minus that of function tokens."""
    return _contrast_claim(
        7,
        "share mutating in deep layers: content − function tokens",
        ">",
        cfg.more_often,
        lambda ts: _class_rows(ts, _mutated(ts)),
        model,
        controls,
        cfg,
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
            stable = st.stabilisation_end > st.critical_layer + 1
            out.append(st.has_split and bool(st.mutation_layers) and stable)
        return out

    st = model.detection
    return claim(
        8,
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
    """Rows for claims 4-5 from :func:`~lvlm_kit.hallucination.object_token_events`.

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
        4,
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
        5,
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


@dataclass
class PresetCounts:
    """Per image and decoding: what CHAIR and Cover count, and the overlap with plain decoding.

    Decodings are ``plain``, the paper's presets (``skip1``, ``skip2``, ``skip3``) and, for
    each preset, ``random.<preset>``: random sets of as many layers after the critical
    layer (counts summed, overlap averaged over the sets). A preset the stages leave
    undefined is absent. Every array is ``[images]``.
    """

    nouns: dict[str, np.ndarray]
    hallucinated: dict[str, np.ndarray]
    covered: dict[str, np.ndarray]  # annotated objects named
    truth: dict[str, np.ndarray]  # annotated objects
    overlap: dict[str, np.ndarray]  # word overlap with plain decoding

    def random_skips(self) -> PresetCounts:
        """These counts with each preset replaced by its random skips of as many layers."""

        def swap(d: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            out = {k: v for k, v in d.items() if not k.startswith("random.")}
            out.update({k[len("random.") :]: v for k, v in d.items() if k.startswith("random.")})
            out = {k: v for k, v in out.items() if k == "plain" or f"random.{k}" in d}
            return out

        names = ("nouns", "hallucinated", "covered", "truth", "overlap")
        return PresetCounts(*(swap(getattr(self, f)) for f in names))


def _chair(counts: PresetCounts, name: str, idx: np.ndarray) -> float:
    nouns = counts.nouns[name][idx].sum()
    return float(counts.hallucinated[name][idx].sum() / nouns) if nouns else math.nan


def _cover(counts: PresetCounts, name: str, idx: np.ndarray) -> float:
    truth = counts.truth[name][idx].sum()
    return float(counts.covered[name][idx].sum() / truth) if truth else math.nan


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
    from .stages import PRESETS, skip_preset

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


def preset_counts(
    loaded: LoadedModel,
    amber: AmberData,
    plain: Sequence[str],
    presets: Mapping[str, Sequence[Sequence[int]]],
    prompt: str,
    max_new_tokens: int,
    progress: bool = True,
) -> tuple[PresetCounts, dict[str, list[str]]]:
    """Generate with each layer set of each decoding and count nouns per image.

    Args:
        loaded: the model (or a noise control, given the model's ``presets``).
        amber: the images and their annotations (one generative query per image).
        plain: ``loaded``'s plain greedy description of each image.
        presets: decoding name -> decoder layer sets (:func:`preset_layers`).
        prompt: the instruction.
        max_new_tokens: generation limit.
        progress: show progress bars.

    Returns:
        ``(counts, texts)``: :class:`PresetCounts` and the generated texts by decoding (the
        first layer set's, for random skips).
    """
    import difflib

    from .generation import generate_texts
    from .hallucination import noun_counts

    images = [amber.image_path(q) for q in amber.queries]
    fields = ("nouns", "hallucinated", "covered", "truth")
    sums: dict[str, dict[str, np.ndarray]] = {f: {} for f in (*fields, "overlap")}
    texts: dict[str, list[str]] = {}
    runs = [("plain", [None])] + [(name, list(sets)) for name, sets in presets.items()]
    for name, sets in runs:
        for layers in sets:
            outs = (
                list(plain)
                if layers is None
                else generate_texts(
                    loaded,
                    images,
                    [prompt] * len(images),
                    max_new_tokens,
                    skip=layers,
                    progress=progress,
                    desc=name,
                )
            )
            texts.setdefault(name, outs)
            rows = noun_counts(
                [{"id": q["id"], "response": t} for q, t in zip(amber.queries, outs)], amber
            )
            overlap = [
                difflib.SequenceMatcher(None, a.split(), b.split()).ratio()
                for a, b in zip(outs, plain)
            ]
            for f in fields:
                values = np.array([r[f] for r in rows], float)
                sums[f][name] = sums[f].get(name, 0) + values
            sums["overlap"][name] = sums["overlap"].get(name, 0) + np.array(overlap) / len(sets)
    return PresetCounts(**sums), texts


def skip1_keeps(
    model: PresetCounts, controls: Mapping[str, PresetCounts], cfg: ClaimConfig
) -> ClaimResult:
    """Claim 9: mean word overlap of skip.1's output with plain decoding."""

    def make(c: PresetCounts):
        return (lambda idx: float(c.overlap["skip1"][idx].mean())), [len(c.overlap["skip1"])]

    return _preset_claim(
        9,
        "word overlap of skip.1 with plain decoding",
        ">=",
        cfg.keeps_output,
        make,
        model,
        controls,
        cfg,
        ("skip1",),
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
            fewer = _chair(c, "plain", idx) - _chair(c, "skip2", idx)
            kept = _cover(c, "skip2", idx) - _cover(c, "plain", idx) + cfg.cover_kept
            return float(np.min([fewer, kept]))

        return stat, [len(c.nouns["plain"])]

    return _preset_claim(
        10,
        "min(CHAIR plain − CHAIR skip.2, Cover change + cover_kept)",
        ">",
        cfg.fewer_hallucinations,
        make,
        model,
        controls,
        cfg,
        ("skip2",),
    )


def skip3_more(
    model: PresetCounts, controls: Mapping[str, PresetCounts], cfg: ClaimConfig
) -> ClaimResult:
    """Claim 11: CHAIR with skip.3 minus CHAIR of plain decoding."""

    def make(c: PresetCounts):
        return (lambda idx: _chair(c, "skip3", idx) - _chair(c, "plain", idx)), [
            len(c.nouns["plain"])
        ]

    return _preset_claim(
        11,
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
        return c is not None and all(n in c.nouns for n in needs)

    if not has(model):
        key, paper, figure, paper_number = PAPER[number]
        nan = Estimate(math.nan, math.nan, math.nan, "inconclusive", 0)
        why = f"the detected stages define no {' / '.join(needs)} preset"
        return ClaimResult(
            number,
            key,
            paper,
            figure,
            paper_number,
            statistic,
            f"{rule} {threshold:g}",
            nan,
            dict.fromkeys(controls),
            "inconclusive",
            [why],
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


def _spreads(xy: np.ndarray) -> np.ndarray:
    """``[units, layers, 2]`` -> ``[layers]`` mean distance to the per-layer centroid."""
    return np.linalg.norm(xy - xy.mean(0, keepdims=True), axis=-1).mean(0)


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
        L = xy.shape[1]

        def stat(idx):
            s = _spreads(xy[idx])
            return float(s[L // 2 :].mean() / max(s[:2].mean(), 1e-12))

        return stat, [xy.shape[0]]

    return claim(
        12,
        "t-SNE spread, deep half / layers 1-2 (tokens resampled)",
        ">=",
        cfg.diverge_ratio,
        make,
        model,
        controls,
        cfg,
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
                s = _spreads(xy[i])
                L = len(s)
                ratios.append(s[L // 2 :].mean() / max(s[: max(1, L // 4)].mean(), 1e-12))
            return float(np.mean(ratios))

        return stat, [xy.shape[0] for xy in arrays]

    n = len(model)
    return claim(
        13,
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
        14,
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
        key, paper, figure, paper_number = PAPER[15]
        k = compression_k(n_layers or 0, cfg)
        nan = Estimate(math.nan, math.nan, math.nan, "no", 0)
        return ClaimResult(
            15,
            key,
            paper,
            figure,
            paper_number,
            f"accuracy margin with the {k} most stable layers skipped",
            ">= 0",
            nan,
            dict.fromkeys(controls),
            "not shown",
            [
                f"the detected stabilisation stage holds fewer than {k} layers "
                f"({cfg.compression_depth:g} of the depth): there are not that many "
                "stable layers to skip"
            ],
        )

    def make(a: SweepAnswers):
        def stat(idx):
            acc0, acck = a.base[idx].mean(), a.skipped[idx].mean()
            return float(min(acck - acc0 + cfg.little_cost, acc0 - cfg.min_accuracy))

        return stat, [len(a.base)]

    return claim(
        15,
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


# ---- the kit's checks of a quantized run (notebook 09) ------------------------------------


def _variant(result: ClaimResult, comparison: Comparison) -> ClaimResult:
    """Name the compared run in the claim's key and statistic (one claim per variant)."""
    result.key = f"{result.key}[{comparison.other.name}]"
    result.statistic = f"{comparison.other.name}: {result.statistic}"
    return result


def quant_same_tokens(
    model: Comparison, controls: Mapping[str, Comparison], cfg: ClaimConfig
) -> ClaimResult:
    """Claim 16: mean share of the full-precision tokens reproduced in order."""

    def make(c: Comparison):
        return (lambda idx: float(c.token_agreement[idx].mean())), [len(c.token_agreement)]

    return _variant(
        claim(
            16,
            "share of the full-precision tokens reproduced in order",
            ">=",
            cfg.same_tokens,
            make,
            model,
            controls,
            cfg,
        ),
        model,
    )


def quant_lens_close(
    model: Comparison, controls: Mapping[str, Comparison], cfg: ClaimConfig
) -> ClaimResult:
    """Claim 17: the worst lens layer's mean KL(full || other), on the full model's tokens."""

    def make(c: Comparison):
        return (lambda idx: float(c.lens_kl[idx].mean(0).max())), [len(c.lens_kl)]

    worst = int(model.lens_kl.mean(0).argmax())
    return _variant(
        claim(
            17,
            "KL(full ‖ quantized) of the lens, worst layer, nats",
            "<=",
            cfg.lens_close,
            make,
            model,
            controls,
            cfg,
            notes=[f"worst lens layer {worst}"],
        ),
        model,
    )


def quant_js_kept(
    model: Comparison, controls: Mapping[str, Comparison], cfg: ClaimConfig
) -> ClaimResult:
    """Claim 18: mean Pearson correlation of the per-image adjacent-layer JS curves."""

    def make(c: Comparison):
        return (lambda idx: float(c.js_correlation[idx].mean())), [len(c.js_correlation)]

    return _variant(
        claim(
            18,
            "correlation of the adjacent-layer JS curves",
            ">=",
            cfg.js_kept,
            make,
            model,
            controls,
            cfg,
        ),
        model,
    )


def quant_stages_kept(
    model: Comparison, controls: Mapping[str, Comparison], cfg: ClaimConfig
) -> ClaimResult:
    """Claim 19: the larger shift of the critical and the first mutation layer (layers).

    Stages are re-detected on each resample of the images, on both runs.
    """

    def make(c: Comparison):
        def stat(idx):
            a = detect_stages([c.reference.traces[i] for i in idx])
            b = detect_stages([c.other.traces[i] for i in idx])
            return float(
                max(
                    abs(a.critical_layer - b.critical_layer),
                    abs(a.stabilisation_end - b.stabilisation_end),
                )
            )

        return stat, [len(c.reference.traces)]

    ref, other = model.reference.stages, model.other.stages
    note = (
        f"critical layer {ref.critical_layer} -> {other.critical_layer}, first mutation "
        f"layer {ref.stabilisation_end} -> {other.stabilisation_end}"
    )
    return _variant(
        claim(
            19,
            "shift of critical / first mutation layer, layers",
            "<=",
            cfg.stages_kept,
            make,
            model,
            controls,
            cfg,
            n_boot=cfg.n_boot_stages,
            notes=[note],
        ),
        model,
    )


def quant_hallucination_kept(
    model: Comparison, controls: Mapping[str, Comparison], cfg: ClaimConfig
) -> ClaimResult:
    """Claim 20: the larger of |CHAIR change| and |Cover change|, pooled over the images.

    Cover is part of it because a model that names nothing has a CHAIR of 0 too.
    """

    def make(c: Comparison):
        ref, other = c.reference, c.other

        def stat(idx):
            chair = other.chair_of(idx) - ref.chair_of(idx)
            cover = other.cover_of(idx) - ref.cover_of(idx)
            return float(max(abs(chair), abs(cover)))

        return stat, [len(ref.traces)]

    ref, other = model.reference, model.other
    note = f"CHAIR {ref.chair:.3f} -> {other.chair:.3f}, Cover {ref.cover:.3f} -> {other.cover:.3f}"
    return _variant(
        claim(
            20,
            "larger absolute change of CHAIR and Cover",
            "<=",
            cfg.hallucination_kept,
            make,
            model,
            controls,
            cfg,
            notes=[note],
        ),
        model,
    )


# ---- the kit's own: the lens on the image tokens (notebook 10) ----------------------------


@dataclass
class PatchAccuracy:
    """Per image and lens layer, the share of a model's patches decoding to their object."""

    accuracy: np.ndarray  # [images, L+1]
    chance: float  # 1 / the number of candidate words


def image_tokens_decode(
    model: PatchAccuracy, controls: Mapping[str, PatchAccuracy], cfg: ClaimConfig
) -> ClaimResult:
    """Claim 21: patch accuracy above chance at the best layer, chosen on the other images.

    The layer is the one with the highest mean accuracy on the images at even positions;
    the accuracy is measured there on the others (so the choice does not inflate it), as a
    difference from chance.
    """

    def make(a: PatchAccuracy):
        best = int(np.nanargmax(np.nanmean(a.accuracy[0::2], 0)))
        judged = a.accuracy[1::2, best]
        return (lambda idx: float(np.nanmean(judged[idx]) - a.chance)), [len(judged)]

    best = int(np.nanargmax(np.nanmean(model.accuracy[0::2], 0)))
    L = model.accuracy.shape[1] - 1
    return claim(
        21,
        "patch accuracy − chance at the best layer (chosen on the other images)",
        ">",
        0.0,
        make,
        model,
        controls,
        cfg,
        notes=[f"best layer {relative(best, L)}; chance {model.chance:.3f}", SPLIT_NOTE],
    )
