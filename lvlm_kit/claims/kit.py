"""The kit's own checks (16-21): a quantized run shows the same picture; the image tokens.

Registered like the paper's claims (:func:`~lvlm_kit.claims.registry.kit_check`), with the
same machinery and controls; the README reports them in a table of their own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from ..compare import Comparison
from ..image_lens import PatchAccuracy
from ..stages import detect_stages
from .core import SPLIT_NOTE, ClaimConfig, ClaimResult, claim, relative
from .registry import kit_check

# ---- the kit's checks of a quantized run (notebook 09) ------------------------------------


def _variant(result: ClaimResult, comparison: Comparison) -> ClaimResult:
    """Name the compared run in the claim's key and statistic (one claim per variant)."""
    result.key = f"{result.key}[{comparison.other.name}]"
    result.statistic = f"{comparison.other.name}: {result.statistic}"
    return result


@kit_check(
    16,
    "a quantized run generates the same tokens",
    "kit, 09",
    "not in the paper (run in fp16)",
)
def quant_same_tokens(
    model: Comparison, controls: Mapping[str, Comparison], cfg: ClaimConfig
) -> ClaimResult:
    """Claim 16: mean share of the full-precision tokens reproduced in order."""

    def make(c: Comparison):
        return (lambda idx: float(c.token_agreement[idx].mean())), [len(c.token_agreement)]

    return _variant(
        claim(
            quant_same_tokens,
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


@kit_check(
    17,
    "a quantized run's lens distributions match full precision",
    "kit, 09",
    "not in the paper (run in fp16)",
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
            quant_lens_close,
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


@kit_check(
    18,
    "a quantized run has the same adjacent-layer JS curve",
    "kit, 09",
    "not in the paper (run in fp16)",
)
def quant_js_kept(
    model: Comparison, controls: Mapping[str, Comparison], cfg: ClaimConfig
) -> ClaimResult:
    """Claim 18: mean Pearson correlation of the per-image adjacent-layer JS curves."""

    def make(c: Comparison):
        return (lambda idx: float(c.js_correlation[idx].mean())), [len(c.js_correlation)]

    return _variant(
        claim(
            quant_js_kept,
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


@kit_check(
    19,
    "a quantized run has the same critical and mutation layers",
    "kit, 09",
    "not in the paper (run in fp16)",
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
                    abs(a.first_mutation_layer - b.first_mutation_layer),
                )
            )

        return stat, [len(c.reference.traces)]

    ref, other = model.reference.stages, model.other.stages
    note = (
        f"critical layer {ref.critical_layer} -> {other.critical_layer}, first mutation "
        f"layer {ref.first_mutation_layer} -> {other.first_mutation_layer}"
    )
    return _variant(
        claim(
            quant_stages_kept,
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


@kit_check(
    20,
    "a quantized run hallucinates as often and names as many real objects",
    "kit, 09",
    "not in the paper (run in fp16)",
)
def quant_hallucination_kept(
    model: Comparison, controls: Mapping[str, Comparison], cfg: ClaimConfig
) -> ClaimResult:
    """Claim 20: the larger of |CHAIR change| and |Cover change|, pooled over the images.

    Cover is part of it because a model that names nothing has no CHAIR (undefined, left
    out) while its Cover falls to 0.
    """

    def make(c: Comparison):
        ref, other = c.reference, c.other

        def stat(idx):
            chair = other.counts.chair_of(idx) - ref.counts.chair_of(idx)
            cover = other.counts.cover_of(idx) - ref.counts.cover_of(idx)
            changes = [abs(x) for x in (chair, cover) if not math.isnan(x)]
            return float(max(changes)) if changes else math.nan

        return stat, [len(ref.traces)]

    ref, other = model.reference, model.other
    note = f"CHAIR {ref.chair:.3f} -> {other.chair:.3f}, Cover {ref.cover:.3f} -> {other.cover:.3f}"
    return _variant(
        claim(
            quant_hallucination_kept,
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


@kit_check(
    21,
    "the image tokens decode to the object in their cell",
    "kit, 10",
    "not in the paper (it decodes generated tokens only)",
)
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
        image_tokens_decode,
        "patch accuracy − chance at the best layer (chosen on the other images)",
        ">",
        0.0,
        make,
        model,
        controls,
        cfg,
        notes=[f"best layer {relative(best, L)}; chance {model.chance:.3f}", SPLIT_NOTE],
    )
