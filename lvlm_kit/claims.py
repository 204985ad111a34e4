"""The paper's claims as statistics with confidence intervals, checked against noise controls.

Each claim of the paper is one function here. It turns what a notebook measured into one
number (the *statistic*), compares it with a threshold that says in numbers what the
paper says in words (every threshold is a field of :class:`ClaimConfig`), and gives a
bootstrap 95% confidence interval over the units that were sampled (images, or tokens of
the one image of §5). The same analysis on noise controls of the model (:func:`controls`:
a re-initialised copy, and a copy whose weights are permuted inside each tensor, with the
model's own weight norms and spectra) is part of every verdict:

- ``shown``: the interval lies on the claim's side of the threshold on the model, and
  every control's interval lies on the other side;
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
    # 2: a "sharp" rise: the mean probability gains at least this much ...
    sharp_rise: float = 0.3
    # ... within a tenth of the model's depth (at least one layer).
    rise_window: float = 0.1
    # 3: content tokens "keep changing candidates": at least half a top-1 switch more per
    # token after the critical layer than function tokens.
    switch_gap: float = 0.5
    # 3, 7: a comparison of word classes needs at least this many distinct words in each
    # (a random-weight model repeating "sun." compares two words, not two classes).
    min_distinct_words: int = 3
    # 4, 7, 14: "more often": a difference of shares above zero.
    more_often: float = 0.0
    # 5: "often": at least half of the hallucinated tokens ...
    often: float = 0.5
    # ... had their runner-up ahead (with at least this probability) just before the jump.
    lead_min_p: float = 0.05
    # 6: "large" shallow vs "small" deep JS: an order of magnitude apart.
    split_ratio: float = 10.0
    # 8: three stages are found in at least this share of bootstrap resamples (lower bound).
    stages_found: float = 0.5
    # 9: "keeps the output": word overlap with plain decoding at least this.
    keeps_output: float = 0.8
    # 10, 11: "removes some" / "more" hallucinations: a CHAIR difference above zero.
    fewer_hallucinations: float = 0.0
    # 12, 13: "diverge" / "fan out": the spread grows at least two-fold.
    diverge_ratio: float = 2.0
    # 15: "at little cost": existence accuracy drops by at most this ...
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
#: the paper's; 16-20 are the kit's checks that a quantized run shows the same picture.
PAPER: dict[int, tuple[str, str, str, str]] = {
    1: ("near_zero_shallow", "token probabilities are near zero in shallow layers",
        "§3, Fig. 2", "≈ 0 before the critical layers"),
    2: ("sharp_rise", "they rise sharply at the critical layers", "§3, Fig. 2",
        "layers ~18-20 of 32 (relative depth ~0.6)"),
    3: ("content_keeps_changing", "easy tokens settle after the critical layers, content "
        "tokens keep changing candidates", "§3, Fig. 2", "qualitative"),
    4: ("hallucinations_mutate", "hallucinated tokens jump in deep layers more often than "
        "correct tokens", "§3, Fig. 3", "qualitative (examples)"),
    5: ("correct_leads_first", "before the jump the correct token often leads, then falls",
        "§3, Fig. 3", "qualitative (examples)"),
    6: ("js_split", "adjacent-layer JS is large in shallow layers and small in deep layers",
        "§4, Fig. 4", "split near the critical layers"),
    7: ("entities_rise_again", "entity tokens' JS rises again in deep layers", "§4, Fig. 4",
        "qualitative"),
    8: ("three_stages", "three stages: rapid evolution, stabilisation, mutation", "§4",
        "found in LLaVA-1.5-7B"),
    9: ("skip1_keeps", "skip.1 (drop the stable middle) keeps the output", "§4, Fig. 5",
        "output almost unchanged, hallucinations included"),
    10: ("skip2_fewer", "skip.2 (skip the mutation layers) removes some hallucinations",
         "§4, Fig. 5", "hallucination corrected in the example"),
    11: ("skip3_more", "skip.3 (critical layers to the last few) hallucinates more than skip.2",
         "§4, Fig. 5", "more hallucinations than skip.2"),
    12: ("tokens_diverge", "one image's tokens cluster in the first layers and diverge with "
         "depth", "§5, Fig. 6", "qualitative (t-SNE)"),
    13: ("vqa_fan", "VQA answer features: a tight shallow neck, a deep fan", "§5, Fig. 7",
         "qualitative (t-SNE)"),
    14: ("llm_fewer_mutations", "the text-only LLM mutates less than the LVLM", "§6",
         "no clear mutation in the LLM"),
    15: ("compression", "skipping stable layers compresses the model at little cost",
         "§6", "little accuracy lost"),
    16: ("quant_same_tokens", "a quantized run generates the same tokens", "kit, 09",
         "not in the paper (run in fp16)"),
    17: ("quant_lens_close", "a quantized run's lens distributions match full precision",
         "kit, 09", "not in the paper (run in fp16)"),
    18: ("quant_js_kept", "a quantized run has the same adjacent-layer JS curve", "kit, 09",
         "not in the paper (run in fp16)"),
    19: ("quant_stages_kept", "a quantized run has the same critical and mutation layers",
         "kit, 09", "not in the paper (run in fp16)"),
    20: ("quant_hallucination_kept", "a quantized run hallucinates as often and names as "
         "many real objects", "kit, 09",
         "not in the paper (run in fp16)"),
}  # fmt: skip


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
            tuple(full), stat, vectorized=False, paired=False, n_resamples=n_boot or cfg.n_boot,
            confidence_level=cfg.level, method="percentile", rng=np.random.default_rng(cfg.seed),
        )  # fmt: skip
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    holds: Holds = "inconclusive"
    if not (math.isnan(low) or math.isnan(high)):
        above = low > threshold if rule == ">" else low >= threshold
        below = high <= threshold if rule == ">" else high < threshold
        if rule == "<=":
            above, below = high <= threshold, low > threshold
        holds = "yes" if above else "no" if below else "inconclusive"
    return Estimate(value, low, high, holds, n)


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
    make: Callable[[Any], tuple[Callable[..., float], Sequence[int]]],
    model_data: Any,
    controls: Mapping[str, Any],
    cfg: ClaimConfig,
    n_boot: int | None = None,
    notes: Sequence[str] = (),
) -> ClaimResult:
    """Measure one claim on the model and its controls with the same analysis.

    Args:
        number: the claim's number in :data:`PAPER`.
        statistic: what is measured, in words.
        rule: ``">="``, ``">"`` or ``"<="``.
        threshold: the claim's threshold (a :class:`ClaimConfig` field).
        make: turns one model's data into ``(stat, sizes)`` for :func:`estimate`.
        model_data: what was measured on the model.
        controls: control name -> the same measured on that control (None when the
            analysis does not exist there, e.g. no skip preset: the verdict is then at best
            ``inconclusive (no control)``).
        cfg: the configuration.
        n_boot: resamples, if not ``cfg.n_boot``.
        notes: extra lines for the report.
    """
    if not isinstance(controls, Mapping):
        raise TypeError(
            "controls must map a control's name to its data, e.g. {'re-initialised': ..., "
            "'permuted': ...} (see claims.controls)."
        )
    key, paper, figure, paper_number = PAPER[number]
    model = estimate(*make(model_data), rule, threshold, cfg, n_boot)
    estimates: dict[str, Estimate | None] = {}
    notes = list(notes)
    for name, data in controls.items():
        cache = getattr(data, "estimates", None)  # a control shared by several claims
        if data is None:
            estimates[name] = None
        elif cache is not None and (number, cfg) in cache:
            estimates[name] = cache[(number, cfg)]
        else:
            estimates[name] = estimate(*make(data), rule, threshold, cfg, n_boot)
            if cache is not None:
                cache[(number, cfg)] = estimates[name]
        e = estimates[name]
        if e is None or math.isnan(e.value):
            notes.append(f"the {name} control has no value for this statistic, so the model "
                         "was not shown to beat it")  # fmt: skip
        elif e.holds == "yes":
            notes.append(f"the statistic holds on the {name} control too, so it says nothing")
        elif e.holds == "inconclusive":
            notes.append(f"on the {name} control the interval straddles the threshold: noise "
                         "might show it too")  # fmt: skip
    if not controls:
        notes.append("no control was measured")
    return ClaimResult(
        number, key, paper, figure, paper_number, statistic, f"{rule} {threshold:g}",
        model, estimates, decide(model, estimates), notes,
    )  # fmt: skip


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


def controls(loaded: LoadedModel, seed: int = 0) -> dict[str, LoadedModel]:
    """The noise controls of ``loaded``, by name (:data:`CONTROL_KINDS`).

    ``"re-initialised"`` (:func:`random_control`) and ``"permuted"``
    (:func:`permuted_control`): a claim is shown only when the model beats both.
    """
    return {
        "re-initialised": random_control(loaded, seed),
        "permuted": permuted_control(loaded, seed),
    }


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
    """Traces of one model on a set of images, and the stages detected on them."""

    traces: list[Trace]
    stages: Stages

    @classmethod
    def of(cls, traces: Sequence[Trace]) -> TraceSet:
        """Detect the stages of ``traces``."""
        return cls(list(traces), detect_stages(traces))


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
    return claim(1, "mean p(emitted) before the critical layer / at the last layer", "<=",
                 cfg.near_zero_share, make, model, controls, cfg,
                 notes=[f"critical layer {relative(c, L)}"])  # fmt: skip


def sharp_rise(model: TraceSet, controls: Mapping[str, TraceSet], cfg: ClaimConfig) -> ClaimResult:
    """Claim 2: the largest gain of the mean p(emitted) within a tenth of the depth."""

    def make(ts: TraceSet):
        probs = [t.token_prob.double().numpy() for t in ts.traces]
        w = max(1, round(cfg.rise_window * ts.stages.n_layers))

        def stat(idx):
            curve = _pick(probs, idx).mean(0)
            return float((curve[w:] - curve[:-w]).max()) if len(idx) else math.nan

        return stat, [len(probs)]

    curve = torch.cat([t.token_prob for t in model.traces]).double().mean(0).numpy()
    L = model.stages.n_layers
    w = max(1, round(cfg.rise_window * L))
    where = int(np.argmax(curve[w:] - curve[:-w])) + w
    return claim(2, f"largest rise of mean p(emitted) over {w} layer(s)", ">=", cfg.sharp_rise,
                 make, model, controls, cfg,
                 notes=[f"steepest rise into layer {relative(where, L)}; critical layer "
                        f"{relative(model.stages.critical_layer, L)}"])  # fmt: skip


def content_keeps_changing(
    model: TraceSet, controls: Mapping[str, TraceSet], cfg: ClaimConfig
) -> ClaimResult:
    """Claim 3: top-1 switches after c per content token minus per function token."""

    def make(ts: TraceSet):
        c = ts.stages.critical_layer
        per_image = []
        for t in ts.traces:
            top1 = t.topk_ids[:, c:, 0]
            switches = (top1[:, 1:] != top1[:, :-1]).sum(1).double().numpy()
            content = np.array([token_kind(tok) == "content" for tok in t.tokens])
            ids = t.token_ids.double().numpy()
            per_image.append(np.stack([switches, content.astype(float), ids], 1))

        def stat(idx):
            rows = _pick(per_image, idx)
            if not _two_classes(rows, cfg):
                return math.nan
            s, content = rows[:, 0], rows[:, 1] > 0
            return _mean_where(s, content) - _mean_where(s, ~content)

        return stat, [len(per_image)]

    return claim(3, "top-1 switches after the critical layer: content − function tokens", ">=",
                 cfg.switch_gap, make, model, controls, cfg)  # fmt: skip


# ---- §4: divergence and stages (Fig. 4) ---------------------------------------------------


def js_split(model: TraceSet, controls: Mapping[str, TraceSet], cfg: ClaimConfig) -> ClaimResult:
    """Claim 6: mean adjacent JS before the critical split over the mean after it."""

    def make(ts: TraceSet):
        js = [t.js.double().numpy() for t in ts.traces]

        def stat(idx):
            curve = _pick(js, idx).mean(0)
            k = critical_split(torch.from_numpy(curve))
            return float(curve[:k].mean() / max(curve[k:].mean(), 1e-12))

        return stat, [len(js)]

    split = relative(model.stages.critical_layer, model.stages.n_layers)
    return claim(6, "shallow / deep mean adjacent-layer JS", ">=", cfg.split_ratio, make, model,
                 controls, cfg, notes=[f"split at layer {split}"])  # fmt: skip


def _two_classes(rows: np.ndarray, cfg: ClaimConfig) -> bool:
    """Whether rows ``[..., is content, token id]`` hold enough distinct words of each class."""
    if not len(rows):
        return False
    content = rows[:, 1] > 0
    return min(len(set(rows[content, 2])), len(set(rows[~content, 2]))) >= cfg.min_distinct_words


def _token_flags(ts: TraceSet) -> list[np.ndarray]:
    """Per image: rows (has a deep mutation, is a content token, token id)."""
    out, k = [], 0
    for t in ts.traces:
        muts = ts.stages.token_mutations[k : k + t.n_tokens]
        k += t.n_tokens
        content = [token_kind(tok) == "content" for tok in t.tokens]
        rows = [[bool(m), c, i] for m, c, i in zip(muts, content, t.token_ids.tolist())]
        out.append(np.array(rows, float).reshape(-1, 3))
    return out


def entities_rise_again(
    model: TraceSet, controls: Mapping[str, TraceSet], cfg: ClaimConfig
) -> ClaimResult:
    """Claim 7: share of content tokens with a deep mutation minus that of function tokens."""

    def make(ts: TraceSet):
        flags = _token_flags(ts)

        def stat(idx):
            rows = _pick(flags, idx)
            if not _two_classes(rows, cfg):
                return math.nan
            content = rows[:, 1] > 0
            return _mean_where(rows[:, 0], content) - _mean_where(rows[:, 0], ~content)

        return stat, [len(flags)]

    return claim(7, "share mutating in deep layers: content − function tokens", ">",
                 cfg.more_often, make, model, controls, cfg)  # fmt: skip


def three_stages(
    model: TraceSet, controls: Mapping[str, TraceSet], cfg: ClaimConfig
) -> ClaimResult:
    """Claim 8: whether three stages are found (1 or 0), over resampled images."""

    def make(ts: TraceSet):
        cfg_stages = ts.stages.config

        def stat(idx):
            st = detect_stages([ts.traces[i] for i in idx], cfg_stages)
            stable = st.stabilisation_end > st.critical_layer + 1
            return float(st.has_split and bool(st.mutation_layers) and stable)

        return stat, [len(ts.traces)]

    st = model.stages
    return claim(8, "three stages found (share of resamples)", ">=", cfg.stages_found, make, model,
                 controls, cfg, n_boot=cfg.n_boot_stages,
                 notes=[f"critical layer {relative(st.critical_layer, st.n_layers)}, mutation "
                        f"layers {st.mutation_layers}"])  # fmt: skip


# ---- §3: hallucinated tokens (Fig. 3) ------------------------------------------------------


@dataclass
class LabelledTokens:
    """Object tokens of one model's descriptions: per image, label and measurements.

    Rows per image: ``[is hallucinated, has a deep mutation, runner-up led before the
    overtake]`` (the last is NaN where no overtake layer was found).
    """

    per_image: list[np.ndarray]


def labelled_tokens(
    events: pd.DataFrame, traces: Sequence[Trace], stages: Stages, cfg: ClaimConfig
) -> LabelledTokens:
    """Rows for claims 4-5 from :func:`~lvlm_kit.hallucination.object_token_events`.

    Args:
        events: one row per object token (``image`` index into ``traces``, ``step``,
            ``label``, ``overtake``, ``rival_before``).
        traces: the plain traces, in image order (their tokens are ``stages``' tokens).
        stages: stages detected on ``traces``.
        cfg: the configuration (``lead_min_p``).
    """
    start = np.cumsum([0] + [t.n_tokens for t in traces])
    per_image = [[] for _ in traces]
    for e in events.itertuples():
        over = e.overtake
        led = math.nan
        if over is not None and not (isinstance(over, float) and math.isnan(over)):
            led = float(over > stages.critical_layer and (e.rival_before or 0) >= cfg.lead_min_p)
        mutated = bool(stages.token_mutations[start[e.image] + e.step])
        per_image[e.image].append([e.label == "hallucinated", mutated, led])
    return LabelledTokens([np.array(rows, float).reshape(-1, 3) for rows in per_image])


def hallucinations_mutate(
    model: LabelledTokens, controls: Mapping[str, LabelledTokens], cfg: ClaimConfig
) -> ClaimResult:
    """Claim 4: share of hallucinated tokens with a deep mutation minus correct ones'."""

    def make(data: LabelledTokens):
        def stat(idx):
            rows = _pick(data.per_image, idx).reshape(-1, 3)
            if not len(rows):
                return math.nan
            return _mean_where(rows[:, 1], rows[:, 0] > 0) - _mean_where(
                rows[:, 1], rows[:, 0] == 0
            )

        return stat, [len(data.per_image)]

    return claim(4, "share with a deep mutation: hallucinated − correct object tokens", ">",
                 cfg.more_often, make, model, controls, cfg)  # fmt: skip


def correct_leads_first(
    model: LabelledTokens, controls: Mapping[str, LabelledTokens], cfg: ClaimConfig
) -> ClaimResult:
    """Claim 5: share of hallucinated tokens whose runner-up led just before they overtook."""

    def make(data: LabelledTokens):
        def stat(idx):
            rows = _pick(data.per_image, idx).reshape(-1, 3)
            led = rows[(rows[:, 0] > 0) & ~np.isnan(rows[:, 2]), 2]
            return float(led.mean()) if len(led) else math.nan

        return stat, [len(data.per_image)]

    return claim(5, "share of hallucinated tokens overtaking a leading runner-up after the "
                 "critical layer", ">=", cfg.often, make, model, controls, cfg)  # fmt: skip


# ---- §4: skipping (Fig. 5) ------------------------------------------------------------------


@dataclass
class PresetCounts:
    """Per image and decoding (plain, skip1, skip2, skip3): nouns, hallucinations, overlap.

    Kept nouns, hallucinated nouns and word overlap with plain decoding, ``[images]`` each.
    A preset the stages leave undefined is absent.
    """

    nouns: dict[str, np.ndarray]  # [images]
    hallucinated: dict[str, np.ndarray]  # [images]
    overlap: dict[str, np.ndarray]  # [images]


def _chair(counts: PresetCounts, name: str, idx: np.ndarray) -> float:
    nouns = counts.nouns[name][idx].sum()
    return float(counts.hallucinated[name][idx].sum() / nouns) if nouns else math.nan


def preset_counts(
    loaded: LoadedModel,
    amber: AmberData,
    traces: Sequence[Trace],
    stages: Stages,
    prompt: str,
    max_new_tokens: int,
    progress: bool = True,
) -> tuple[PresetCounts, dict[str, list[str]]]:
    """Generate with each skip preset the stages define and count nouns per image.

    Args:
        loaded: the model.
        amber: the images and their annotations (one generative query per image).
        traces: plain greedy traces of those images (the ``plain`` decoding).
        stages: the stages detected on ``traces``.
        prompt: the instruction.
        max_new_tokens: generation limit.
        progress: show progress bars.

    Returns:
        ``(counts, texts)``: :class:`PresetCounts` and the generated texts by decoding.
    """
    import difflib

    from .generation import generate_texts
    from .hallucination import noun_counts
    from .stages import PRESETS, skip_preset

    images = [amber.image_path(q) for q in amber.queries]
    texts = {"plain": [t.generated_text for t in traces]}
    for name in PRESETS:
        try:
            layers = skip_preset(stages, name)
        except ValueError:
            continue
        texts[name] = generate_texts(loaded, images, [prompt] * len(images), max_new_tokens,
                                     skip=layers, progress=progress, desc=name)  # fmt: skip
    nouns, hallucinated, overlap = {}, {}, {}
    for name, outs in texts.items():
        rows = noun_counts(
            [{"id": q["id"], "response": t} for q, t in zip(amber.queries, outs)], amber
        )
        nouns[name] = np.array([r["nouns"] for r in rows], float)
        hallucinated[name] = np.array([r["hallucinated"] for r in rows], float)
        overlap[name] = np.array([
            difflib.SequenceMatcher(None, a.split(), b.split()).ratio()
            for a, b in zip(outs, texts["plain"])
        ])  # fmt: skip
    return PresetCounts(nouns, hallucinated, overlap), texts


def skip1_keeps(
    model: PresetCounts, controls: Mapping[str, PresetCounts], cfg: ClaimConfig
) -> ClaimResult:
    """Claim 9: mean word overlap of skip.1's output with plain decoding."""

    def make(c: PresetCounts):
        return (lambda idx: float(c.overlap["skip1"][idx].mean())), [len(c.overlap["skip1"])]

    return _preset_claim(9, "word overlap of skip.1 with plain decoding", ">=", cfg.keeps_output,
                         make, model, controls, cfg, ("skip1",))  # fmt: skip


def skip2_fewer(
    model: PresetCounts, controls: Mapping[str, PresetCounts], cfg: ClaimConfig
) -> ClaimResult:
    """Claim 10: CHAIR of plain decoding minus CHAIR with the mutation layers skipped."""

    def make(c: PresetCounts):
        return (lambda idx: _chair(c, "plain", idx) - _chair(c, "skip2", idx)), [
            len(c.nouns["plain"])
        ]

    return _preset_claim(10, "CHAIR plain − CHAIR skip.2", ">", cfg.fewer_hallucinations,
                         make, model, controls, cfg, ("skip2",))  # fmt: skip


def skip3_more(
    model: PresetCounts, controls: Mapping[str, PresetCounts], cfg: ClaimConfig
) -> ClaimResult:
    """Claim 11: CHAIR with skip.3 minus CHAIR with skip.2."""

    def make(c: PresetCounts):
        return (lambda idx: _chair(c, "skip3", idx) - _chair(c, "skip2", idx)), [
            len(c.nouns["plain"])
        ]

    return _preset_claim(11, "CHAIR skip.3 − CHAIR skip.2", ">", cfg.fewer_hallucinations,
                         make, model, controls, cfg, ("skip2", "skip3"))  # fmt: skip


def _preset_claim(number, statistic, rule, threshold, make, model, controls, cfg, needs):
    def has(c: PresetCounts | None) -> bool:
        return c is not None and all(n in c.nouns for n in needs)

    if not has(model):
        key, paper, figure, paper_number = PAPER[number]
        nan = Estimate(math.nan, math.nan, math.nan, "inconclusive", 0)
        why = f"the detected stages define no {' / '.join(needs)} preset"
        return ClaimResult(number, key, paper, figure, paper_number, statistic,
                           f"{rule} {threshold:g}", nan, dict.fromkeys(controls), "inconclusive",
                           [why])  # fmt: skip
    return claim(number, statistic, rule, threshold, make, model,
                 {k: c if has(c) else None for k, c in controls.items()}, cfg)  # fmt: skip


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

    return claim(12, "t-SNE spread, deep half / layers 1-2 (tokens resampled)", ">=",
                 cfg.diverge_ratio, make, model, controls, cfg)  # fmt: skip


def vqa_fan(model: np.ndarray, controls: Mapping[str, np.ndarray], cfg: ClaimConfig) -> ClaimResult:
    """Claim 13: largest 2-D spread of the answer token over its smallest in layers 1-3.

    Args:
        model: ``[images, layers 1..L, 2]`` projected answer-token features.
        controls: control name -> the same for that noise control.
        cfg: the configuration.
    """

    def make(xy: np.ndarray):
        def stat(idx):
            s = _spreads(xy[idx])
            return float(s.max() / max(s[:3].min(), 1e-12))

        return stat, [xy.shape[0]]

    return claim(13, "t-SNE spread, widest layer / narrowest of layers 1-3", ">=",
                 cfg.diverge_ratio, make, model, controls, cfg)  # fmt: skip


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
        lvlm, llm = (_token_flags(ts) for ts in pair)

        def stat(i, j):
            a, b = _pick(lvlm, i).reshape(-1, 3), _pick(llm, j).reshape(-1, 3)
            return float(a[:, 0].mean() - b[:, 0].mean()) if len(a) and len(b) else math.nan

        return stat, [len(lvlm), len(llm)]

    return claim(14, "share of tokens mutating: LVLM − LLM", ">", cfg.more_often, make, model,
                 controls, cfg)  # fmt: skip


@dataclass
class SweepAnswers:
    """Per image, the share of its existence questions answered correctly.

    Unskipped (``base``) and with the k most stable layers skipped; ``[images]`` each.
    """

    k: int
    base: np.ndarray
    skipped: np.ndarray


def sweep_answers(points: Sequence[Any]) -> SweepAnswers:
    """Claim 15's data from a :func:`~lvlm_kit.applications.compression_sweep` run.

    Compares k = 0 with the largest k swept; per image, the share of its existence
    questions answered correctly.
    """
    base, last = points[0], points[-1]
    if base.existence_correct is None:
        raise ValueError("the sweep asked no existence questions; pass `discriminative` data.")
    images = sorted(base.existence_correct)
    return SweepAnswers(
        k=last.k,
        base=np.array([np.mean(base.existence_correct[i]) for i in images]),
        skipped=np.array([np.mean(last.existence_correct[i]) for i in images]),
    )


def compression(
    model: SweepAnswers, controls: Mapping[str, SweepAnswers | None], cfg: ClaimConfig
) -> ClaimResult:
    """Claim 15: the smaller margin of "little accuracy lost" and "accuracy to lose".

    ``min(acc_k − acc_0 + little_cost, acc_0 − min_accuracy)``: at least 0 when skipping the k
    most stable layers costs at most ``little_cost`` of an accuracy of at least
    ``min_accuracy`` (a model that answers at chance has nothing to compress).
    """

    def make(a: SweepAnswers):
        def stat(idx):
            acc0, acck = a.base[idx].mean(), a.skipped[idx].mean()
            return float(min(acck - acc0 + cfg.little_cost, acc0 - cfg.min_accuracy))

        return stat, [len(a.base)]

    return claim(15, f"accuracy margin with the {model.k} most stable layers skipped", ">=",
                 0.0, make, model, controls, cfg,
                 notes=[f"existence accuracy {model.base.mean():.3f} unskipped, "
                        f"{model.skipped.mean():.3f} with {model.k} layers skipped"])  # fmt: skip


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

    return _variant(claim(16, "share of the full-precision tokens reproduced in order", ">=",
                          cfg.same_tokens, make, model, controls, cfg), model)  # fmt: skip


def quant_lens_close(
    model: Comparison, controls: Mapping[str, Comparison], cfg: ClaimConfig
) -> ClaimResult:
    """Claim 17: the worst lens layer's mean KL(full || other), on the full model's tokens."""

    def make(c: Comparison):
        return (lambda idx: float(c.lens_kl[idx].mean(0).max())), [len(c.lens_kl)]

    worst = int(model.lens_kl.mean(0).argmax())
    return _variant(claim(17, "KL(full ‖ quantized) of the lens, worst layer, nats", "<=",
                          cfg.lens_close, make, model, controls, cfg,
                          notes=[f"worst lens layer {worst}"]), model)  # fmt: skip


def quant_js_kept(
    model: Comparison, controls: Mapping[str, Comparison], cfg: ClaimConfig
) -> ClaimResult:
    """Claim 18: mean Pearson correlation of the per-image adjacent-layer JS curves."""

    def make(c: Comparison):
        return (lambda idx: float(c.js_correlation[idx].mean())), [len(c.js_correlation)]

    return _variant(claim(18, "correlation of the adjacent-layer JS curves", ">=", cfg.js_kept,
                          make, model, controls, cfg), model)  # fmt: skip


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
            return float(max(abs(a.critical_layer - b.critical_layer),
                             abs(a.stabilisation_end - b.stabilisation_end)))  # fmt: skip

        return stat, [len(c.reference.traces)]

    ref, other = model.reference.stages, model.other.stages
    note = (f"critical layer {ref.critical_layer} -> {other.critical_layer}, first mutation "
            f"layer {ref.stabilisation_end} -> {other.stabilisation_end}")  # fmt: skip
    return _variant(claim(19, "shift of critical / first mutation layer, layers", "<=",
                          cfg.stages_kept, make, model, controls, cfg, n_boot=cfg.n_boot_stages,
                          notes=[note]), model)  # fmt: skip


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
    note = (f"CHAIR {ref.chair:.3f} -> {other.chair:.3f}, Cover {ref.cover:.3f} -> "
            f"{other.cover:.3f}")  # fmt: skip
    return _variant(claim(20, "larger absolute change of CHAIR and Cover", "<=",
                          cfg.hallucination_kept, make, model, controls, cfg, notes=[note]),
                    model)  # fmt: skip
