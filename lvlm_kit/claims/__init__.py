"""The paper's claims as statistics with confidence intervals, checked against noise controls.

Each claim of the paper is one function (:mod:`.paper`; the kit's own checks in :mod:`.kit`),
registered with its number and its row of the paper (:mod:`.registry`). It turns what a
notebook measured into one number (the *statistic*), compares it with a threshold that says
in numbers what the paper says in words (every threshold is a field of
:class:`ClaimConfig`), and gives a bootstrap 95% confidence interval over the units that
were sampled (images, or tokens of the one image of §5; an exact Clopper-Pearson interval
for a share of all-or-nothing units). The same analysis on controls is part of every verdict:

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

The machinery (thresholds, estimates, verdicts, the split) is :mod:`.core`; the noise
controls are :mod:`.controls`.

Layers are lens layers 0..L (0 is the embedding output); claims that name a layer also give
it as relative depth j / L, so the testbed's 3 of 12 reads beside the paper's ~18-20 of 32.
"""

from .controls import (
    CONTROL_KINDS,
    CONTROL_SEED_OFFSET,
    control_traces,
    controls,
    layer_shuffled_control,
    permuted_control,
    random_control,
)
from .core import (
    SPLIT_NOTE,
    VERDICTS,
    ClaimConfig,
    ClaimResult,
    Estimate,
    TraceSet,
    bootstrap_band,
    claim,
    control_text,
    decide,
    estimate,
    estimate_text,
    label_null,
    relative,
    share_estimate,
    unmeasured,
)
from .kit import (
    PatchAccuracy,
    image_tokens_decode,
    quant_hallucination_kept,
    quant_js_kept,
    quant_lens_close,
    quant_same_tokens,
    quant_stages_kept,
)
from .paper import (
    LabelledTokens,
    SweepAnswers,
    compression,
    compression_k,
    content_keeps_changing,
    correct_leads_first,
    entities_rise_again,
    hallucinations_mutate,
    js_split,
    labelled_tokens,
    llm_fewer_mutations,
    near_zero_shallow,
    preset_layers,
    sharp_rise,
    skip1_keeps,
    skip2_fewer,
    skip3_more,
    step_bic,
    sweep_answers,
    three_stages,
    tokens_diverge,
    vqa_fan,
)
from .registry import (
    REGISTRY,
    ClaimSpec,
    kit_check,
    paper_claim,
    spec_of,
)

__all__ = [
    "bootstrap_band",
    "CONTROL_KINDS",
    "CONTROL_SEED_OFFSET",
    "ClaimConfig",
    "ClaimResult",
    "ClaimSpec",
    "Estimate",
    "LabelledTokens",
    "PatchAccuracy",
    "REGISTRY",
    "SPLIT_NOTE",
    "SweepAnswers",
    "TraceSet",
    "VERDICTS",
    "claim",
    "compression",
    "compression_k",
    "content_keeps_changing",
    "control_text",
    "control_traces",
    "controls",
    "core",
    "correct_leads_first",
    "decide",
    "entities_rise_again",
    "estimate",
    "estimate_text",
    "hallucinations_mutate",
    "image_tokens_decode",
    "js_split",
    "kit",
    "kit_check",
    "label_null",
    "labelled_tokens",
    "layer_shuffled_control",
    "llm_fewer_mutations",
    "near_zero_shallow",
    "paper",
    "paper_claim",
    "permuted_control",
    "preset_layers",
    "quant_hallucination_kept",
    "quant_js_kept",
    "quant_lens_close",
    "quant_same_tokens",
    "quant_stages_kept",
    "random_control",
    "registry",
    "relative",
    "share_estimate",
    "sharp_rise",
    "skip1_keeps",
    "skip2_fewer",
    "skip3_more",
    "spec_of",
    "step_bic",
    "sweep_answers",
    "three_stages",
    "tokens_diverge",
    "unmeasured",
    "vqa_fan",
]
