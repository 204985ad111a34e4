"""The machinery of a claim: thresholds, estimates with intervals, verdicts against controls.

:func:`claim` measures one statistic on the model and on each control with the same
analysis and decides the verdict (:func:`decide`); :class:`TraceSet` splits a model's
traces so that the stages are detected on one half and the claims judged on the other.
What each verdict means is in :mod:`lvlm_kit.claims`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from ..stages import Stages, detect_stages
from ..tracing import Trace
from .registry import spec_of

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
        """``0.123 [0.1, 0.15]`` (:func:`estimate_text`)."""
        return estimate_text(self)


def estimate_text(e: Estimate | Mapping[str, Any] | None) -> str:
    """``0.123 [0.1, 0.15]``: an estimate (or its dict) with its interval; ``n/a`` without one.

    An interval that is missing (None or NaN) is left out. Every report, notebook sentence and
    README table writes estimates with this.
    """
    e = asdict(e) if isinstance(e, Estimate) else e
    value = None if e is None else e.get("value")
    if value is None or value != value:
        return "n/a"
    low, high = e.get("low"), e.get("high")
    if low is None or high is None or low != low or high != high:
        return f"{value:.3g}"
    return f"{value:.3g} [{low:.3g}, {high:.3g}]"


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


# ---- the machinery ----------------------------------------------------------------------


def bootstrap_band(
    n_units: int,
    statistic: Callable[[np.ndarray], np.ndarray],
    n_boot: int = 500,
    rng: np.random.Generator | int = 0,
    level: float = 0.95,
    ignore_nan: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """A percentile bootstrap band of a curve over resampled units (images, tokens).

    The band a figure draws around a mean curve; a claim's interval is :func:`estimate`.

    Args:
        n_units: how many units there are.
        statistic: turns resampled unit indices ``[n_units]`` (with repeats) into the curve
            ``[...]``.
        n_boot: resamples.
        rng: a generator (drawn from in turn, so several bands share one seeded stream) or
            a seed.
        level: the band's confidence level.
        ignore_nan: skip NaN resamples (``np.nanpercentile``).

    Returns:
        ``(low, high)``, each shaped like the curve.
    """
    rng = np.random.default_rng(rng) if isinstance(rng, int) else rng
    curves = np.stack([statistic(rng.integers(0, n_units, n_units)) for _ in range(n_boot)])
    tail = round(50 * (1 - level), 10)
    percentile = np.nanpercentile if ignore_nan else np.percentile
    low, high = percentile(curves, [tail, 100 - tail], axis=0)
    return low, high


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
    return "; ".join(f"{name} {estimate_text(e)}" for name, e in controls.items())


def claim(
    which: int | Callable[..., Any],
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
        which: the claim's function (or number) in the
            :data:`~lvlm_kit.claims.registry.REGISTRY`.
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
    spec = spec_of(which)
    number = spec.number

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
        spec.key,
        spec.sentence,
        spec.figure,
        spec.reported,
        statistic,
        f"{rule} {threshold:g}",
        model,
        estimates,
        decide(model, estimates),
        notes,
    )


def unmeasured(
    which: int | Callable[..., Any],
    statistic: str,
    rule: str,
    controls: Mapping[str, Any],
    verdict: Verdict,
    notes: Sequence[str],
    holds: Holds = "inconclusive",
) -> ClaimResult:
    """A claim whose statistic does not exist on the model (e.g. no such preset).

    Args:
        which: the claim's function (or number).
        statistic: what would have been measured.
        rule: the rule with its threshold, e.g. ``">= 0"``.
        controls: the controls' names (their estimates are None).
        verdict: ``"inconclusive"``, or ``"not shown"`` when its absence answers the claim.
        notes: why it was not measured.
        holds: the estimate's ``holds``.
    """
    spec = spec_of(which)
    nan = Estimate(math.nan, math.nan, math.nan, holds, 0)
    return ClaimResult(
        spec.number,
        spec.key,
        spec.sentence,
        spec.figure,
        spec.reported,
        statistic,
        rule,
        nan,
        dict.fromkeys(controls),
        verdict,
        list(notes),
    )


def _pick(per_unit: Sequence[np.ndarray], idx: np.ndarray) -> np.ndarray:
    """Concatenate the rows of the chosen units (with repeats)."""
    return np.concatenate([per_unit[i] for i in idx]) if len(idx) else np.empty(0)


def _mean_where(values: np.ndarray, mask: np.ndarray) -> float:
    return float(values[mask].mean()) if mask.any() else math.nan


def relative(layer: int, n_layers: int) -> str:
    """``"3 of 12 (0.25)"``."""
    return f"{layer} of {n_layers} ({layer / n_layers:.2f})"


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
