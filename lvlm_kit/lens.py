"""Early exit ("logit lens"): decode any layer's residual stream with the language head.

The lens works on the *residual stream* ``h_j`` (j = 0 is the input of the first decoder
layer, j = L the output of the last one, before the final norm), which
:class:`~lvlm_kit.surgery.ResidualRecorder` captures with forward hooks. Two norm policies:

- ``"final_norm"`` (default): ``φ(norm(h_j))`` for every j. At j = L this is exactly
  what the model computes, so the last-layer lens equals the model's logits.
- ``"raw"``: ``φ(h_j)`` without the norm for j < L, as in the paper authors' code (they
  apply ``lm_head`` to HF ``hidden_states[j]``). HF's last entry ``hidden_states[L]`` is
  already normed, so at j = L the norm is applied once here too; the two policies agree on
  the last layer and differ elsewhere. Nothing is ever normed twice.

All projections run in float32, whatever the model's dtype, on a private float32 copy of
the norm and head.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from torch import nn

from .anatomy import Anatomy

NormPolicy = Literal["final_norm", "raw"]
NORM_POLICIES: tuple[str, ...] = ("final_norm", "raw")


def check_norm_policy(norm: str) -> str:
    """Validate a norm policy name."""
    if norm not in NORM_POLICIES:
        raise ValueError(f"lens norm policy {norm!r} is unknown; use one of {NORM_POLICIES}.")
    return norm


class Lens:
    """Float32 early-exit decoder for one model: the final norm and the language head.

    It does what the model's own head does after the product: add the bias, multiply by the
    logit scale (Cohere) and soft-cap (PaliGemma, Gemma 2 / 3 text), as the model's
    :class:`~lvlm_kit.anatomy.Anatomy` states.

    Build it once per model and norm policy (:meth:`LoadedModel.lens
    <lvlm_kit.loading.LoadedModel.lens>` caches it): it holds a float32 copy of the head
    (``[V, d]``; the head itself when that is already float32 on the same device).

    Args:
        anatomy: the model's :class:`~lvlm_kit.anatomy.Anatomy`.
        norm: ``"final_norm"`` or ``"raw"`` (see the module docstring).
        device: where to project; defaults to the language head's device.

    Raises:
        ValueError: an unknown norm policy, or a head without weights (meta device).
    """

    def __init__(
        self, anatomy: Anatomy, norm: NormPolicy = "final_norm", device: torch.device | None = None
    ) -> None:
        self.norm_policy = check_norm_policy(norm)
        head = anatomy.lm_head
        weight = head.weight
        if weight.device.type == "meta":
            raise ValueError("the language head has no weights (meta device); load real weights.")
        self.device = torch.device(device) if device is not None else weight.device
        # [V, d] float32; dequantizes if the head was quantized (bitsandbytes skips it by default).
        self.weight = _dense_weight(head).to(self.device, torch.float32)
        bias = getattr(head, "bias", None)
        self.bias = None if bias is None else bias.detach().to(self.device, torch.float32)
        self.final_norm: nn.Module = copy.deepcopy(anatomy.final_norm).to(
            self.device, torch.float32
        )
        self.final_norm.requires_grad_(False)
        self.n_layers = anatomy.n_layers
        self.softcap, self.logit_scale = anatomy.softcap, anatomy.logit_scale

    @property
    def vocab_size(self) -> int:
        """V, the number of logits per position."""
        return int(self.weight.shape[0])

    def _normed(self, layer: int) -> bool:
        return self.norm_policy == "final_norm" or layer == self.n_layers

    @torch.inference_mode()
    def normed(self, hidden: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """The residual-stream states as the head receives them: float32, normed by the policy.

        Args:
            hidden: states of one lens layer or a stack of all, as for :meth:`logits`.
            layer: the lens layer, or None for a stack, as for :meth:`logits`.

        Returns:
            float32 states on the lens's device, the shape of ``hidden``.
        """
        h = hidden.to(self.device, torch.float32)
        if layer is None:
            if h.dim() < 2 or h.shape[-2] != self.n_layers + 1:
                raise ValueError(
                    f"expected a stack of all layers, shape [..., {self.n_layers + 1}, d], "
                    f"got {tuple(hidden.shape)}; pass layer=j for states of one lens layer."
                )
            if self.norm_policy == "final_norm":
                return self.final_norm(h)
            return torch.cat([h[..., :-1, :], self.final_norm(h[..., -1:, :])], dim=-2)
        if not 0 <= layer <= self.n_layers:
            raise ValueError(f"lens layer {layer} is out of range 0..{self.n_layers}.")
        return self.final_norm(h) if self._normed(layer) else h

    @torch.inference_mode()
    def unembed(self, h: torch.Tensor) -> torch.Tensor:
        """The language head on :meth:`normed` states: ``[..., d]`` float32 -> ``[..., V]``.

        The product with the head, then the bias, logit scale and soft-cap the model applies.
        """
        out = h @ self.weight.T
        if self.bias is not None:
            out = out + self.bias
        if self.logit_scale is not None:
            out = out * self.logit_scale
        if self.softcap is not None:
            out = torch.tanh(out / self.softcap) * self.softcap
        return out

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """Decode residual-stream states with the language head, in float32.

        Args:
            hidden: ``[..., d]`` states of lens layer ``layer``; or, with ``layer=None``,
                ``[..., L+1, d]`` states of every lens layer 0..L (any dtype/device).
            layer: the lens layer (0..L) all of ``hidden`` comes from, or None for a
                stack of all layers.

        Returns:
            ``[..., V]`` (or ``[..., L+1, V]``) float32 logits; lens layer L equals the
            model's logits.
        """
        return self.unembed(self.normed(hidden, layer))

    def log_probs(self, hidden: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """``log_softmax`` of :meth:`logits`, same shapes, float32."""
        return torch.log_softmax(self.logits(hidden, layer), dim=-1)


def _dense_weight(head: nn.Module) -> torch.Tensor:
    weight = head.weight
    if weight.dtype in (torch.uint8, torch.int8) or type(weight).__name__ in ("Params4bit",):
        try:  # bitsandbytes-quantized head
            import bitsandbytes.functional as bnbf

            return bnbf.dequantize_4bit(weight.data, weight.quant_state).detach()
        except Exception as exc:  # pragma: no cover - needs CUDA
            raise NotImplementedError(
                "the language head is quantized and could not be dequantized; load the model "
                "with the head unquantized (bitsandbytes skips lm_head by default)."
            ) from exc
    return weight.detach()
