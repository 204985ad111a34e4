"""The one place that knows model architectures.

:data:`FAMILIES` lists every supported ``model_type`` with what sets it apart (how its head
transforms the logits, whether it takes chat prompts). An :class:`Anatomy` names the parts
the analyses need: the decoder layers (in order), the final norm, the language head and
what the model does after it, the token embeddings and the image-token id. Every other
module goes through it, so supporting a new architecture means editing only this file.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Family:
    """What the kit knows of one ``model_type``.

    Attributes:
        kind: ``"vision"`` (an image-text-to-text LVLM whose image features enter the
            decoder as tokens) or ``"text"`` (a causal language model).
        softcap: where the model's own head soft-caps its logits
            (``tanh(z / c) * c``): ``"config"`` or ``"text_config"`` (the attribute
            ``final_logit_softcapping`` there), or None when the model's forward never does.
        scale: where the model's forward multiplies its logits by ``logit_scale``:
            ``"config"`` or ``"text_config"``, or None when it never does.
        since: the transformers release from which the model's forward applies
            ``softcap`` / ``scale`` (None: every supported release). Before it, the head
            is expected to apply neither.
        chat: whether prompts go through a chat template (PaliGemma takes plain text; its
            processor puts the image tokens in front).
        packages: packages its processor needs beyond the kit's own.
    """

    kind: str
    softcap: str | None = None
    scale: str | None = None
    since: str | None = None
    chat: bool = True
    packages: tuple[str, ...] = ()

    def applies_transform(self, transformers_version: str) -> bool:
        """Whether ``softcap`` / ``scale`` apply under this transformers release."""
        if self.since is None:
            return True
        from packaging.version import Version

        return Version(transformers_version) >= Version(self.since)


#: model_type -> what the kit does with it. The head transforms follow each model's own
#: forward in transformers 5 (Gemma 3's image-text model applies neither the soft-cap nor
#: the logit scale its text config carries; Aya Vision's applies the logit scale from
#: transformers 5.25 on). They are the *expected* transforms: the first lens of a loaded
#: model measures the head against the model's own logits and raises
#: :class:`HeadMismatchError` when they disagree (:func:`lvlm_kit.loading.check_head`).
FAMILIES: dict[str, Family] = {
    "llava": Family("vision"),
    "llava_next": Family("vision"),
    "llava_onevision": Family("vision"),
    "qwen2_vl": Family("vision"),
    "qwen2_5_vl": Family("vision"),
    "qwen3_vl": Family("vision"),
    "idefics3": Family("vision"),
    "smolvlm": Family("vision", packages=("num2words",)),
    "gemma3": Family("vision"),
    "paligemma": Family("vision", softcap="text_config", chat=False),
    "internvl": Family("vision"),
    "aya_vision": Family("vision", scale="text_config", since="5.25"),
    "mistral3": Family("vision", packages=("torchvision",)),
    "llama": Family("text"),
    "mistral": Family("text"),
    "qwen2": Family("text"),
    "qwen3": Family("text"),
    "gemma": Family("text"),
    "gemma2": Family("text", softcap="config"),
    "gemma3_text": Family("text", softcap="config"),
    "cohere": Family("text", scale="config"),
    "cohere2": Family("text", scale="config"),
}
#: model_type -> kind ("vision" or "text") of every supported architecture.
SUPPORTED: dict[str, str] = {name: family.kind for name, family in FAMILIES.items()}
#: Architectures the kit cannot trace, and why.
UNSUPPORTED: dict[str, str] = {
    "mllama": (
        "Mllama (Llama 3.2 Vision) feeds the image through cross-attention layers, not as "
        "tokens in the decoder's residual stream, so there are no image-token states to "
        "decode and skipping a layer would also remove image access"
    ),
    "idefics": (
        "IDEFICS (v1) feeds the image through gated cross-attention layers, not as tokens "
        "in the residual stream"
    ),
}

# Attribute paths, from the top-level model, to the decoder backbone (the module holding
# `layers`, `norm` and `embed_tokens`). The first that exists wins; the list covers the
# transformers >= 4.52 layout (`model.language_model`), Idefics3's (`model.text_model`), the
# older one (`language_model.model`) of LLaVA, and `model` for causal LMs.
_BACKBONE_PATHS: tuple[tuple[str, ...], ...] = (
    ("model", "language_model"),
    ("model", "text_model"),  # Idefics3, SmolVLM
    ("language_model", "model"),
    ("model",),
)


def supported_text() -> str:
    """Human-readable list of supported ``model_type`` values."""
    return ", ".join(f"{k} ({v})" for k, v in SUPPORTED.items())


def check_supported(model_type: str) -> str:
    """Return the kind ("vision"/"text") of a ``model_type`` or raise NotImplementedError."""
    if model_type in UNSUPPORTED:
        raise NotImplementedError(
            f"model_type={model_type!r} cannot be analysed by lvlm_kit: {UNSUPPORTED[model_type]}. "
            f"Supported: {supported_text()}."
        )
    if model_type not in SUPPORTED:
        raise NotImplementedError(
            f"Architecture model_type={model_type!r} is not supported by lvlm_kit. "
            f"Supported: {supported_text()}. Add it in lvlm_kit/anatomy.py."
        )
    return SUPPORTED[model_type]


@dataclass(frozen=True)
class Anatomy:
    """The parts of a model that the logit lens and layer skipping act on."""

    model_type: str  # config.model_type, e.g. "llava"
    kind: str  # "vision" (LVLM) or "text" (plain causal LM)
    layers: nn.ModuleList  # decoder layers, layer 1..L of the paper
    final_norm: nn.Module  # the norm applied after the last decoder layer
    lm_head: nn.Module  # the language head φ: hidden [.., d] -> logits [.., V]
    embed_tokens: nn.Module  # token embedding table
    image_token_id: int | None  # id of the (expanded) image placeholder token, if any
    max_positions: int | None = None  # the decoder's context length, if the config states it
    softcap: float | None = None  # the head's logit soft-cap c: tanh(z / c) * c
    logit_scale: float | None = None  # a factor on the head's logits (Cohere)
    chat: bool = True  # prompts go through a chat template
    layer_types: tuple[str, ...] | None = None  # per decoder layer, e.g. "sliding_attention"

    @property
    def n_layers(self) -> int:
        """Number of decoder layers L (the lens sees L + 1 states: embeddings and L)."""
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        """Width d of the residual stream."""
        return int(self.lm_head.weight.shape[1])

    @property
    def vocab_size(self) -> int:
        """Rows V of the language head."""
        return int(self.lm_head.weight.shape[0])

    def image_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Boolean mask of image-token positions.

        Args:
            input_ids: ``[seq]`` or ``[batch, seq]`` token ids (after the processor
                expanded the image placeholder).

        Returns:
            Bool tensor of the same shape; all False for text-only models.
        """
        if self.image_token_id is None:
            return torch.zeros_like(input_ids, dtype=torch.bool)
        return input_ids == self.image_token_id


def _get_path(obj: object, path: tuple[str, ...]) -> object | None:
    for name in path:
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


def resolve_anatomy(model: nn.Module) -> Anatomy:
    """Find the decoder layers, final norm, language head and embeddings of ``model``.

    Args:
        model: a transformers model whose ``config.model_type`` is in :data:`SUPPORTED`.

    Returns:
        The model's :class:`Anatomy`.

    Raises:
        NotImplementedError: for an unsupported ``model_type`` or an unexpected layout.
    """
    config = model.config
    model_type = getattr(config, "model_type", type(model).__name__)
    kind = check_supported(model_type)
    backbone = None
    for path in _BACKBONE_PATHS:
        cand = _get_path(model, path)
        if cand is not None and hasattr(cand, "layers") and hasattr(cand, "norm"):
            backbone = cand
            break
    lm_head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if backbone is None or lm_head is None:
        raise NotImplementedError(
            f"{type(model).__name__} (model_type={model_type!r}) does not have the expected "
            "layout (decoder with `layers`, `norm`, and an output embedding). "
            f"Supported: {supported_text()}."
        )
    image_token_id = None
    if kind == "vision":
        image_token_id = getattr(config, "image_token_id", None)
        if image_token_id is None:
            image_token_id = getattr(config, "image_token_index", None)
    text_config = getattr(config, "text_config", None) or config
    max_positions = getattr(text_config, "max_position_embeddings", None)
    family = FAMILIES[model_type]
    softcap = scale = None
    import transformers

    if family.applies_transform(transformers.__version__):
        holders = {"config": config, "text_config": text_config}
        if family.softcap is not None:
            softcap = getattr(holders[family.softcap], "final_logit_softcapping", None)
        if family.scale is not None:
            scale = getattr(holders[family.scale], "logit_scale", None)
    layer_types = getattr(text_config, "layer_types", None)
    return Anatomy(
        model_type=model_type,
        kind=kind,
        layers=backbone.layers,
        final_norm=backbone.norm,
        lm_head=lm_head,
        embed_tokens=backbone.embed_tokens,
        image_token_id=None if image_token_id is None else int(image_token_id),
        max_positions=None if max_positions is None else int(max_positions),
        softcap=None if softcap is None else float(softcap),
        logit_scale=None if scale is None else float(scale),
        chat=family.chat,
        layer_types=None if layer_types is None else tuple(layer_types),
    )
