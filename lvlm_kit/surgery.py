"""Every hook and patch the kit puts on a model, in one place.

- :func:`layer_output` reads the hidden states out of a decoder layer's output; every hook
  goes through it, so an unexpected output fails loudly here and nowhere else.
- :class:`LensTap` hooks chosen lens layers and hands their states to one method; the two
  recorders below specialise it.
- :class:`ResidualRecorder` records the residual stream at the predicting position of every
  forward pass (what :func:`~lvlm_kit.tracing.trace` decodes).
- :class:`LayerTap` keeps the latest last-position states of chosen layers (what
  layer-contrast decoding reads at each step).
- :func:`skip_layers` removes decoder layers from the forward pass inside ``generate()``.

Each is a context manager that leaves the model exactly as it found it on exit, also after
an exception. Lens layer j is the residual stream after decoder layer j - 1 (j = 0: the
input of the first layer); decoder-layer indices are ``0..L-1`` (``anatomy.layers[i]``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import torch
from torch import nn

from .anatomy import Anatomy


def layer_output(output: object) -> torch.Tensor:
    """The hidden states ``[batch, seq, d]`` in a decoder layer's output.

    Decoder layers of the supported families return the tensor itself; a tuple whose first
    item is the tensor (the layout of older or custom layers) is accepted too.

    Raises:
        TypeError: any other output, naming its type.
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(
        f"a decoder layer returned {type(output).__name__}, not the hidden-states tensor "
        "(or a tuple starting with it). This architecture is not supported; see "
        "lvlm_kit/anatomy.py."
    )


_Tap = TypeVar("_Tap", bound="LensTap")


class LensTap:
    """Hooks that hand chosen lens layers' hidden states to :meth:`on_state` at every forward.

    Lens layer 0 is layer 0's input (a forward pre-hook), lens layer j >= 1 decoder layer
    j - 1's output; within one forward pass they arrive in order 0..L. The recorders of the
    kit specialise this one class: :class:`ResidualRecorder` (every layer, every step of a
    generation) and :class:`LayerTap` (a few layers, the latest pass).

    Args:
        anatomy: the model's :class:`~lvlm_kit.anatomy.Anatomy`.
        layers: lens layers 0..L to hook.
    """

    def __init__(self, anatomy: Anatomy, layers: Sequence[int]) -> None:
        bad = [j for j in layers if not 0 <= j <= anatomy.n_layers]
        if bad:
            raise ValueError(f"lens layers {bad} do not exist; use 0..{anatomy.n_layers}.")
        self.anatomy, self.layers = anatomy, list(layers)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def on_state(self, layer: int, hidden: torch.Tensor) -> None:
        """Receive lens layer ``layer``'s ``[batch, seq, d]`` hidden states (subclasses)."""
        raise NotImplementedError

    @property
    def active(self) -> bool:
        """True inside the ``with`` block."""
        return bool(self._handles)

    def __enter__(self: _Tap) -> _Tap:
        blocks = self.anatomy.layers
        for j in self.layers:
            if j == 0:

                def pre(module: nn.Module, args: tuple, kwargs: dict) -> None:
                    self.on_state(0, args[0] if args else kwargs["hidden_states"])

                handle = blocks[0].register_forward_pre_hook(pre, with_kwargs=True)
            else:

                def hook(module: nn.Module, args: tuple, output: object, j: int = j) -> None:
                    self.on_state(j, layer_output(output))

                handle = blocks[j - 1].register_forward_hook(hook)
            self._handles.append(handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class ResidualRecorder(LensTap):
    """Record the residual stream at the last position of each forward pass.

    Hooks layer 0's input (lens layer 0) and every decoder layer's output (lens layers
    1..L). Inside ``generate()`` with a KV cache, forward call t (the prefill for t = 0)
    predicts generated token t, so after K new tokens :attr:`steps` holds K stacks.

    Args:
        anatomy: the model's :class:`~lvlm_kit.anatomy.Anatomy`.
        device: where to keep the captured states (default: where they were computed).
        all_positions: keep every position of the (batch-1) sequence, not only the last:
            each step is then ``[L+1, seq, d]`` (for teacher-forced reading of a sequence).

    Example:
        >>> with ResidualRecorder(anatomy) as rec:
        ...     model.generate(**inputs, max_new_tokens=8)
        >>> rec.stacked().shape  # [K, L+1, d]
    """

    def __init__(
        self,
        anatomy: Anatomy,
        device: torch.device | str | None = None,
        all_positions: bool = False,
    ) -> None:
        super().__init__(anatomy, range(anatomy.n_layers + 1))
        self.device = device
        self.all_positions = all_positions
        self.steps: list[torch.Tensor | None] = []  # K tensors [L+1, d] (None once dropped)
        self._dropped = 0
        self._current: list[torch.Tensor] = []

    def _keep(self, hidden: torch.Tensor) -> torch.Tensor:
        kept = (hidden[0] if self.all_positions else hidden[0, -1]).detach()
        if self.device is not None:
            moved = kept.to(self.device)
            if moved is not kept:  # already a copy
                return moved
        # The last position of a longer sequence (the prefill) is copied, so that the rest of
        # it can be freed; a one-position output is kept as it is (no copy per step).
        return kept.clone() if not self.all_positions and hidden.shape[1] > 1 else kept

    def on_state(self, layer: int, hidden: torch.Tensor) -> None:
        """Start a step at lens layer 0, close it (stack ``[L+1, ...]``) at the last layer."""
        if layer == 0:
            self._current = []
        self._current.append(self._keep(hidden))
        if layer == self.anatomy.n_layers:
            self.steps.append(torch.stack(self._current))
            self._current = []

    def stacked(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Recorded steps ``start:stop`` (default all) as ``[K, L+1, d]``.

        ``[K, L+1, seq, d]`` with all positions.

        Raises:
            RuntimeError: nothing recorded, or some of those steps were dropped.
        """
        if not self.steps:
            raise RuntimeError("no forward pass was recorded inside the ResidualRecorder block.")
        steps = self.steps[start:stop]
        if any(step is None for step in steps):
            raise RuntimeError(f"steps before {self._dropped} were dropped (drop()).")
        return torch.stack(steps)

    def drop(self, stop: int) -> None:
        """Free the recorded steps before ``stop`` (their places in :attr:`steps` stay, None)."""
        for i in range(self._dropped, stop):
            self.steps[i] = None
        self._dropped = max(self._dropped, stop)


class LayerTap(LensTap):
    """Keep the latest last-position hidden states of chosen lens layers.

    Args:
        anatomy: the model's anatomy.
        layers: lens layers 1..L to tap (lens layer j is decoder layer j - 1's output).

    Attributes:
        latest: lens layer -> ``[batch, d]`` states of the most recent forward pass.
    """

    def __init__(self, anatomy: Anatomy, layers: Sequence[int]) -> None:
        bad = [j for j in layers if not 1 <= j <= anatomy.n_layers]
        if bad:
            raise ValueError(f"lens layers {bad} cannot be tapped; use 1..{anatomy.n_layers}.")
        super().__init__(anatomy, layers)
        self.latest: dict[int, torch.Tensor] = {}

    def on_state(self, layer: int, hidden: torch.Tensor) -> None:
        """Keep the last position."""
        self.latest[layer] = hidden[:, -1].detach()

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.latest.clear()


def check_layers(layers: Iterable[int], n_layers: int) -> list[int]:
    """Validate decoder-layer indices to skip; returns them sorted.

    Raises:
        ValueError: duplicates, indices outside ``0..n_layers-1``, or all layers.
    """
    layers = list(layers)
    if any(not isinstance(i, int) or isinstance(i, bool) for i in layers):
        raise ValueError(f"layer indices must be ints, got {layers}.")
    dupes = sorted({i for i in layers if layers.count(i) > 1})
    if dupes:
        raise ValueError(f"layer indices {dupes} are listed more than once; list each once.")
    bad = [i for i in layers if not 0 <= i < n_layers]
    if bad:
        raise ValueError(
            f"layer indices {bad} are out of range: this model has decoder layers "
            f"0..{n_layers - 1}."
        )
    if len(layers) == n_layers:
        raise ValueError(f"cannot skip all {n_layers} decoder layers; keep at least one.")
    return sorted(layers)


def _identity(hidden_states: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
    return hidden_states


def _idx_modules(layer: nn.Module) -> list[nn.Module]:
    return [m for m in layer.modules() if isinstance(getattr(m, "layer_idx", None), int)]


def cache_slots(anatomy: Anatomy, skipped: Sequence[int]) -> dict[int, int]:
    """The KV-cache slot of each kept decoder layer while ``skipped`` layers are removed.

    Kept layers take the cache's slots in order, each among the slots of its own attention
    type (a model mixing sliding-window and full attention builds each slot for its type), so
    that the first slot, from which transformers reads the sequence length, belongs to the
    first layer that runs. With a single type this numbers the kept layers 0, 1, 2...

    Raises:
        ValueError: every layer of the first slot's type is skipped.
    """
    types = anatomy.layer_types or ("attention",) * anatomy.n_layers
    free: dict[str, list[int]] = {}
    for slot, kind in enumerate(types):
        free.setdefault(kind, []).append(slot)
    slots = {i: free[types[i]].pop(0) for i in range(anatomy.n_layers) if i not in skipped}
    if 0 not in slots.values():
        raise ValueError(
            f"this model mixes attention types {sorted(set(types))}; skipping {list(skipped)} "
            f"removes every {types[0]!r} layer, and transformers reads the sequence length "
            f"from the first such layer's cache. Keep at least one {types[0]!r} layer."
        )
    return slots


@contextmanager
def skip_layers(anatomy: Anatomy, layers: Sequence[int]) -> Iterator[list[int]]:
    """Run the model with decoder ``layers`` removed from the forward pass.

    Valid inside ``generate()`` with a KV cache. A skipped layer's ``forward`` becomes the
    identity (no compute, no cache write; its hooks still fire, so a Trace of a skipped
    generation keeps all L + 1 layer entries, skipped layers repeating their input). The
    kept layers' attention ``layer_idx`` values are renumbered (:func:`cache_slots`) so
    the cache stays dense: transformers derives positions and mask sizes from cache slot 0,
    which must belong to the first layer that runs.

    Args:
        anatomy: the model's anatomy (``loaded.anatomy``).
        layers: decoder-layer indices ``0..L-1`` to skip (may be empty).

    Yields:
        The sorted list of skipped layers.

    Example:
        >>> with skip_layers(loaded.anatomy, [14, 15, 16]):
        ...     out = loaded.model.generate(**inputs, max_new_tokens=32)
    """
    skipped = check_layers(layers, anatomy.n_layers)
    slots = cache_slots(anatomy, skipped)
    saved_idx: list[tuple[nn.Module, int]] = []
    patched: list[nn.Module] = []
    try:
        for i, layer in enumerate(anatomy.layers):
            if i in skipped:
                layer.forward = _identity
                patched.append(layer)
                continue
            for m in _idx_modules(layer):
                saved_idx.append((m, m.layer_idx))
                m.layer_idx = slots[i]
        yield skipped
    finally:
        for layer in patched:
            del layer.forward  # back to the class's forward
        for m, idx in saved_idx:
            m.layer_idx = idx
