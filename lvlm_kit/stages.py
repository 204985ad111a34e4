"""Critical layer, mutation layers and the three stages, detected from Traces.

Algorithm (all parameters in :class:`StageConfig`):

1. **Critical layer c** (aggregate). Take the mean adjacent-layer JS curve over all
   tokens, ``s_i = mean_t JSD(p_i, p_{i+1})`` for i = 0..L-1, work on ``log(s_i + eps)``
   (JS spans orders of magnitude), and fit two constant segments: the split k minimising
   the total squared error, with at least ``min_segment`` points per side. ``c = k``:
   JS pairs before c belong to the shallow "rapid evolution" regime, from c on to the
   stable regime. If the shallow mean is not larger than the deep mean there is no such
   split and c is reported but flagged (``has_split = False``).
2. **Per-token critical layer**: the first lens layer j at which the emitted token's
   probability reaches ``rise_fraction`` of its last-layer probability.
3. **Per-token mutations**: deep lens layers j > c where the distribution changes abruptly
   again, a JS event: ``JSD(p_{j-1}, p_j)`` *rises again* (it exceeds the step before it,
   ``JSD(p_{j-2}, p_{j-1})``) and is a robust outlier among that token's deep JS values
   (``> median + spike_z · 1.4826 · MAD`` and ``> min_spike_js``). Requiring a rise keeps
   the tail of a smoothly falling JS curve (whose first deep steps are its largest) from
   counting as mutations. A deep jump of the emitted token's probability by at least
   ``min_jump`` is reported apart, as a *late rise* (``token_rises``): it is mostly the
   paper's confidence rise after the critical layers, not a mutation.
4. **Mutation layers** (aggregate): deep layers where at least ``min_share`` of the
   tokens mutate and where mutations concentrate: the share is also at least
   ``min_concentration`` times the mean share over the deep layers. Nearly every token has
   one largest deep step, so an even spread (about 1/(L - c) per layer) is no mutation
   stage. The stages are rapid evolution [0, c), stabilisation [c, m) and
   mutation [m, L] with m the first mutation layer (no mutation stage if none).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .tracing import Trace


@dataclass
class StageConfig:
    """Parameters of the stage detection."""

    eps: float = 1e-6  # added to JS before the log in the change-point fit
    min_segment: int = 2  # fewest JS points on each side of the critical split
    rise_fraction: float = 0.5  # per-token critical layer: share of final probability reached
    spike_z: float = 3.5  # robust z-score of a JS spike among a token's deep layers
    min_spike_js: float = 0.02  # absolute floor (nats) for a JS spike
    min_jump: float = 0.2  # emitted-token probability jump counted as a late rise
    min_share: float = 0.1  # share of tokens mutating at a layer for an aggregate mutation
    min_concentration: float = 1.5  # ... and that share over the mean deep-layer share


@dataclass
class Stages:
    """Detected stages of one or more traces (lens layer indices 0..L)."""

    n_layers: int  # L
    critical_layer: int  # c: first layer of the stabilisation stage
    has_split: bool  # shallow JS mean > deep JS mean at the split
    mutation_layers: list[int]  # aggregate mutation layers (> c), ascending
    js_curve: list[float]  # [L] mean adjacent JS over tokens
    shallow_js: float  # mean JS of pairs before c
    deep_js: float  # mean JS of pairs from c on
    token_critical: list[int]  # [K] per-token critical layer
    token_mutations: list[list[int]]  # [K] per-token mutation layers (JS events)
    mutation_share: list[float]  # [L+1] share of tokens mutating at each layer
    token_rises: list[list[int]] = field(default_factory=list)  # [K] late p(emitted) jumps
    config: StageConfig = field(default_factory=StageConfig)

    @property
    def first_mutation_layer(self) -> int:
        """The first mutation layer, where the stabilisation stage ends; L + 1 without one."""
        return self.mutation_layers[0] if self.mutation_layers else self.n_layers + 1

    @property
    def split_ratio(self) -> float:
        """Shallow over deep mean adjacent-layer JS (above 1: the shallow layers change more)."""
        return self.shallow_js / max(self.deep_js, 1e-12)

    def stage_of(self, layer: int) -> str:
        """Name of the stage a lens layer belongs to ("rapid evolution", ...)."""
        if layer < self.critical_layer:
            return "rapid evolution"
        if layer >= self.first_mutation_layer:
            return "mutation"
        return "stabilisation"

    def summary(self) -> dict:
        """JSON-ready headline numbers."""
        return {
            "n_layers": self.n_layers,
            "critical_layer": self.critical_layer,
            "has_split": self.has_split,
            "mutation_layers": self.mutation_layers,
            "shallow_js": self.shallow_js,
            "deep_js": self.deep_js,
            "median_token_critical": float(torch.tensor(self.token_critical).float().median()),
            "tokens_with_mutation": sum(bool(m) for m in self.token_mutations)
            / max(len(self.token_mutations), 1),
            "tokens_with_late_rise": sum(bool(r) for r in self.token_rises)
            / max(len(self.token_rises), 1),
        }


def critical_split(curve: torch.Tensor, min_segment: int = 2, eps: float = 1e-6) -> int:
    """Best two-segment split k of ``log(curve + eps)`` (k = first index of the 2nd segment).

    Args:
        curve: ``[n]`` non-negative values (n ≥ 2 · min_segment).
        min_segment: minimum points per segment.
        eps: log offset.

    Returns:
        The split index k in ``[min_segment, n - min_segment]``.
    """
    x = torch.log(curve.double() + eps)
    n = x.shape[0]
    if n < 2 * min_segment:
        raise ValueError(f"need at least {2 * min_segment} JS values to split, got {n}.")
    best, best_k = float("inf"), min_segment
    for k in range(min_segment, n - min_segment + 1):
        a, b = x[:k], x[k:]
        sse = float(((a - a.mean()) ** 2).sum() + ((b - b.mean()) ** 2).sum())
        if sse < best - 1e-12:
            best, best_k = sse, k
    return best_k


def detect_stages(
    traces: Trace | Sequence[Trace],
    config: StageConfig | None = None,
    critical_layer: int | None = None,
) -> Stages:
    """Detect the critical layer, mutation layers and stages.

    Args:
        traces: one Trace or several with the same number of layers (tokens are pooled).
        config: detection parameters.
        critical_layer: use this critical layer instead of fitting one (e.g. the layer
            detected on other images, so that these are judged, not fitted).

    Returns:
        The :class:`Stages`.
    """
    cfg = config or StageConfig()
    traces = [traces] if isinstance(traces, Trace) else list(traces)
    if not traces or any(t.n_tokens == 0 for t in traces):
        raise ValueError("detect_stages needs at least one trace with generated tokens.")
    if len({t.n_layers for t in traces}) != 1:
        raise ValueError("all traces must come from models with the same number of layers.")
    js = torch.cat([t.js for t in traces]).double()  # [K, L]
    prob = torch.cat([t.token_prob for t in traces]).double()  # [K, L+1]
    K, L = js.shape
    curve = js.mean(0)
    c = (
        critical_split(curve, cfg.min_segment, cfg.eps)
        if critical_layer is None
        else critical_layer
    )
    if not 1 <= c < L:
        raise ValueError(f"critical_layer must be in 1..{L - 1}, got {c}.")
    shallow, deep = float(curve[:c].mean()), float(curve[c:].mean())

    final = prob[:, -1:]
    reached = prob >= cfg.rise_fraction * final
    token_critical = [int(torch.nonzero(r)[0]) if r.any() else L for r in reached]

    token_mutations: list[list[int]] = []
    token_rises: list[list[int]] = []
    counts = torch.zeros(L + 1)
    for t in range(K):
        deep_js = js[t, c:]  # pairs (c -> c+1) ... (L-1 -> L): steps into layers c+1..L
        before = js[t, c - 1 : -1]  # the step before each of them
        med = deep_js.median()
        mad = (deep_js - med).abs().median()
        limit = max(float(med + cfg.spike_z * 1.4826 * mad), cfg.min_spike_js)
        jumps = (prob[t, c + 1 :] - prob[t, c:-1]).abs()
        spikes = (deep_js > limit) & (deep_js > before)
        layers = [c + 1 + i for i in range(deep_js.shape[0]) if bool(spikes[i])]
        token_rises.append(
            [c + 1 + i for i in range(deep_js.shape[0]) if float(jumps[i]) >= cfg.min_jump]
        )
        token_mutations.append(layers)
        counts[layers] += 1
    share = (counts / K).tolist()
    floor = max(cfg.min_share, cfg.min_concentration * sum(share[c + 1 :]) / (L - c))
    mutation_layers = [j for j in range(c + 1, L + 1) if share[j] >= floor]
    return Stages(
        n_layers=L,
        critical_layer=c,
        has_split=shallow > deep,
        mutation_layers=mutation_layers,
        js_curve=curve.tolist(),
        shallow_js=shallow,
        deep_js=deep,
        token_critical=token_critical,
        token_mutations=token_mutations,
        mutation_share=share,
        token_rises=token_rises,
        config=cfg,
    )


PRESETS: tuple[str, ...] = ("skip1", "skip2", "skip3")


def skip_preset(stages: Stages, name: str, n_last: int = 2) -> list[int]:
    """Decoder layers to skip for the paper's presets, derived from detected stages.

    With critical layer c and first mutation layer m (lens indices; decoder layer i
    outputs lens layer i + 1), for :func:`~lvlm_kit.surgery.skip_layers`:

    - ``skip1``: jump from the critical layer to the mutation layers — skip the stable
      middle, lens layers c+1 .. m-1 (decoder layers c .. m-2).
    - ``skip2``: skip only the mutation layers (every detected one).
    - ``skip3``: jump from the critical layer to the last ``n_last`` layers — skip lens
      layers c+1 .. L-n_last.

    Raises:
        ValueError: an unknown preset, or one the stages leave empty (e.g. no mutation).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown skip preset {name!r}; use one of {PRESETS}.")
    c, L = stages.critical_layer, stages.n_layers
    if name == "skip3":
        layers = list(range(c, L - n_last))
    elif not stages.mutation_layers:
        raise ValueError(f"{name} needs mutation layers, and none were detected in these traces.")
    elif name == "skip1":
        layers = list(range(c, stages.first_mutation_layer - 1))
    else:
        layers = [m - 1 for m in stages.mutation_layers]
    if not layers:
        raise ValueError(f"{name} skips no layer for critical layer {c} and these stages.")
    return layers


#: Function words: with punctuation, the paper's "easy" tokens (they settle after the
#: critical layers); everything else alphabetic counts as content (nouns, verbs, attributes,
#: and attribute/relation prepositions such as "above" or "behind").
FUNCTION_WORDS = frozenset(
    "a an the is are was were be been of in on at to for with and or but this that these "
    "those there it its as by from into".split()
)


def token_kind(token: str) -> str:
    """``"function"`` for punctuation, function words and special tokens, else ``"content"``."""
    word = token.strip().lower()
    if not word or not any(ch.isalpha() for ch in word) or word.startswith("<"):
        return "function"
    return "function" if word in FUNCTION_WORDS else "content"


# ---- summaries of traces by layer and token kind -----------------------------------------


def js_after_embedding(traces: Sequence[Trace]) -> torch.Tensor:
    """Mean adjacent-layer JS over every token, the embedding step left out (claim 6's curve).

    Returns:
        ``[L-1]`` float64: pairs (1 -> 2) ... (L-1 -> L).
    """
    return torch.cat([t.js[:, 1:] for t in traces]).double().mean(0)


def probability_profile(traces: Sequence[Trace], stages: Stages) -> dict[str, float]:
    """The emitted token's mean probability around the critical layer (the paper's Fig. 2).

    Returns:
        ``{"shallow", "deep", "last", "steepest"}``: mean p(emitted) over every token in lens
        layers ``0..c-1``, in ``c..L`` and at ``L``; and the lens layer into which the mean
        probability rises most.
    """
    probs = torch.cat([t.token_prob for t in traces])  # [tokens, L+1]
    c = stages.critical_layer
    return {
        "shallow": float(probs[:, :c].mean()),
        "deep": float(probs[:, c:].mean()),
        "last": float(probs[:, -1].mean()),
        "steepest": int((probs[:, 1:] - probs[:, :-1]).mean(0).argmax()) + 1,
    }


def switches_by_kind(traces: Sequence[Trace], critical_layer: int) -> dict[str, float]:
    """Mean top-1 switches per token between consecutive layers after ``critical_layer``.

    Returns:
        ``{"function": ..., "content": ...}`` (:func:`token_kind`), a kind with no token
        left out.
    """
    kinds = [token_kind(tok) for t in traces for tok in t.tokens]
    top1 = torch.cat([t.topk_ids[:, :, 0] for t in traces])  # [tokens, L+1]
    c = critical_layer
    switches = (top1[:, c + 1 :] != top1[:, c:-1]).sum(1).float()
    return {
        k: float(switches[[i for i, x in enumerate(kinds) if x == k]].mean())
        for k in ("function", "content")
        if k in kinds
    }


def share_by_kind(traces: Sequence[Trace], per_token: Sequence[Sequence[int]]) -> dict[str, float]:
    """Share of the tokens of each kind with at least one event in ``per_token``.

    Args:
        traces: the traces whose tokens ``per_token`` lists, in order.
        per_token: ``[tokens]`` per-token event layers, e.g. ``Stages.token_mutations``.

    Returns:
        ``{"function": ..., "content": ...}`` (0 for a kind with no token).
    """
    kinds = [token_kind(tok) for t in traces for tok in t.tokens]
    return {
        k: sum(bool(e) for e, x in zip(per_token, kinds) if x == k) / max(kinds.count(k), 1)
        for k in ("function", "content")
    }
