"""The one place that knows model architectures.

An :class:`Anatomy` names the parts the analyses need: the decoder layers (in order), the
final norm, the language head, the token embeddings and the image-token id. Every other
module goes through it, so supporting a new architecture means editing only this file.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

#: model_type -> kind. "vision": an LVLM whose language model is a Llama-style decoder;
#: "text": a plain causal LM (Llama/Vicuna and decoders with the same layout).
SUPPORTED: dict[str, str] = {
    "llava": "vision",
    "llava_next": "vision",
    "llama": "text",
    "mistral": "text",
    "qwen2": "text",
}

# Attribute paths, from the top-level model, to the decoder backbone (the module holding
# `layers`, `norm` and `embed_tokens`). The first that exists wins; the list covers the
# transformers >= 4.52 layout (`model.language_model`) and the older one
# (`language_model.model`) of LLaVA, and `model` for causal LMs.
_BACKBONE_PATHS: tuple[tuple[str, ...], ...] = (
    ("model", "language_model"),
    ("language_model", "model"),
    ("model",),
)


def supported_text() -> str:
    """Human-readable list of supported ``model_type`` values."""
    return ", ".join(f"{k} ({v})" for k, v in SUPPORTED.items())


def check_supported(model_type: str) -> str:
    """Return the kind ("vision"/"text") of a ``model_type`` or raise NotImplementedError."""
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
    return Anatomy(
        model_type=model_type,
        kind=kind,
        layers=backbone.layers,
        final_norm=backbone.norm,
        lm_head=lm_head,
        embed_tokens=backbone.embed_tokens,
        image_token_id=None if image_token_id is None else int(image_token_id),
        max_positions=None if max_positions is None else int(max_positions),
    )
