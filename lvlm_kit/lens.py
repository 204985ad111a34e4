"""Early exit ("logit lens"): decode any layer's residual stream with the language head.

The lens works on the *residual stream* ``h_j`` (j = 0 is the input of the first decoder
layer, j = L the output of the last one, before the final norm), which
:class:`ResidualRecorder` captures with forward hooks. Two norm policies:

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
    """Float32 early-exit decoder for one model.

    Args:
        anatomy: the model's :class:`~lvlm_kit.anatomy.Anatomy`.
        norm: ``"final_norm"`` or ``"raw"`` (see the module docstring).
        device: where to project; defaults to the language head's device.
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
        # [V, d] float32 copy; dequantizes if the head was quantized (it normally is not).
        self.weight = _dense_weight(head).to(self.device, torch.float32)
        bias = getattr(head, "bias", None)
        self.bias = None if bias is None else bias.detach().to(self.device, torch.float32)
        self.norm: nn.Module = copy.deepcopy(anatomy.final_norm).to(self.device, torch.float32)
        self.norm.requires_grad_(False)
        self.n_layers = anatomy.n_layers

    @property
    def vocab_size(self) -> int:
        """V, the number of logits per position."""
        return int(self.weight.shape[0])

    @torch.inference_mode()
    def logits(self, residuals: torch.Tensor) -> torch.Tensor:
        """Project a stack of residual-stream states of layers 0..L.

        Args:
            residuals: ``[n, L+1, d]`` residual states (any dtype/device).

        Returns:
            ``[n, L+1, V]`` float32 logits; ``[:, L]`` equals the model's logits.
        """
        if residuals.dim() != 3 or residuals.shape[1] != self.n_layers + 1:
            raise ValueError(
                f"expected residuals of shape [n, {self.n_layers + 1}, d], got "
                f"{tuple(residuals.shape)}"
            )
        h = residuals.to(self.device, torch.float32)
        if self.norm_policy == "final_norm":
            h = self.norm(h)
        else:
            h = torch.cat([h[:, :-1], self.norm(h[:, -1:])], dim=1)
        out = h @ self.weight.T
        return out if self.bias is None else out + self.bias

    def log_probs(self, residuals: torch.Tensor) -> torch.Tensor:
        """``log_softmax`` of :meth:`logits`: ``[n, L+1, d] -> [n, L+1, V]`` float32."""
        return torch.log_softmax(self.logits(residuals), dim=-1)


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


class ResidualRecorder:
    """Context manager that records the residual stream at the last position of each forward.

    Hooks layer 0's input (j = 0) and every decoder layer's output (j = 1..L). Inside
    ``generate()`` with a KV cache, forward call t (the prefill for t = 0) predicts
    generated token t, so after K new tokens :attr:`steps` holds K stacks.

    Args:
        anatomy: the model's :class:`~lvlm_kit.anatomy.Anatomy`.
        device: where to keep the captured states (default: where they were computed).

    Example:
        >>> with ResidualRecorder(anatomy) as rec:
        ...     model.generate(**inputs, max_new_tokens=8)
        >>> rec.stacked().shape  # [K, L+1, d]
    """

    def __init__(self, anatomy: Anatomy, device: torch.device | str | None = None) -> None:
        self.anatomy = anatomy
        self.device = device
        self.steps: list[torch.Tensor] = []
        self._current: list[torch.Tensor] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _keep(self, hidden: torch.Tensor) -> torch.Tensor:
        last = hidden[0, -1].detach()
        return last.to(self.device) if self.device is not None else last.clone()

    def _pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        self._current = [self._keep(hidden)]

    def _make_hook(self, index: int):
        last = index == self.anatomy.n_layers - 1

        def hook(module: nn.Module, args: tuple, output: object) -> None:
            hidden = output[0] if isinstance(output, tuple) else output
            self._current.append(self._keep(hidden))
            if last:
                self.steps.append(torch.stack(self._current))
                self._current = []

        return hook

    def __enter__(self) -> ResidualRecorder:
        layers = self.anatomy.layers
        self._handles.append(layers[0].register_forward_pre_hook(self._pre_hook, with_kwargs=True))
        for i, layer in enumerate(layers):
            self._handles.append(layer.register_forward_hook(self._make_hook(i)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def stacked(self) -> torch.Tensor:
        """All recorded steps as ``[K, L+1, d]`` (in the model's dtype)."""
        if not self.steps:
            raise RuntimeError("no forward pass was recorded inside the ResidualRecorder block.")
        return torch.stack(self.steps)
