"""Skip connections during generation: remove decoder layers from the forward pass.

:func:`skip_layers` is a context manager valid inside ``generate()`` with a KV cache. A
skipped layer's ``forward`` becomes the identity (no compute, no cache write; its hooks
still fire, so a Trace of a skipped generation keeps all L + 1 layer entries, skipped
layers repeating their input). The kept layers' attention ``layer_idx`` values are
renumbered to be contiguous, so the cache stays dense: transformers derives positions and
mask sizes from cache slot 0, which must belong to the first layer that runs.
Everything is restored on exit, also after an exception.

Layer indices here are decoder-layer indices ``0..L-1`` (``anatomy.layers[i]``), whose
output is lens layer ``i + 1``.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from torch import nn

from .anatomy import Anatomy

if TYPE_CHECKING:
    from .inputs import ImageLike
    from .loading import LoadedModel
    from .stages import Stages
    from .trace import Trace

PRESETS: tuple[str, ...] = ("skip1", "skip2", "skip3")


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


def _identity_forward(layer: nn.Module):
    ann = inspect.signature(layer.forward).return_annotation
    as_tuple = "tuple" in str(ann).lower()  # transformers < 4.54 decoder layers return tuples

    def forward(hidden_states, *args, **kwargs):
        return (hidden_states,) if as_tuple else hidden_states

    return forward


def _idx_modules(layer: nn.Module) -> list[nn.Module]:
    return [m for m in layer.modules() if isinstance(getattr(m, "layer_idx", None), int)]


@contextmanager
def skip_layers(anatomy: Anatomy, layers: Sequence[int]) -> Iterator[list[int]]:
    """Run the model with decoder ``layers`` removed from the forward pass.

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
    saved_idx: list[tuple[nn.Module, int]] = []
    patched: list[nn.Module] = []
    try:
        new_idx = 0
        for i, layer in enumerate(anatomy.layers):
            if i in skipped:
                layer.forward = _identity_forward(layer)
                patched.append(layer)
                continue
            for m in _idx_modules(layer):
                saved_idx.append((m, m.layer_idx))
                m.layer_idx = new_idx
            new_idx += 1
        yield skipped
    finally:
        for layer in patched:
            del layer.forward  # back to the class's forward
        for m, idx in saved_idx:
            m.layer_idx = idx


def skip_preset(stages: Stages, name: str, n_last: int = 2) -> list[int]:
    """Decoder layers to skip for the paper's presets, derived from detected stages.

    With critical layer c and first mutation layer m (lens indices; decoder layer i
    outputs lens layer i + 1):

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
        layers = list(range(c, stages.mutation_layers[0] - 1))
    else:
        layers = [m - 1 for m in stages.mutation_layers]
    if not layers:
        raise ValueError(f"{name} skips no layer for critical layer {c} and these stages.")
    return layers


def skip_traces(
    loaded: LoadedModel,
    image: ImageLike | None,
    prompt: str,
    stages: Stages,
    presets: Sequence[str] = PRESETS,
    **trace_kwargs,
) -> dict[str, Trace]:
    """Trace the same input under each skip preset, for side-by-side comparison.

    Args:
        loaded: the model.
        image: the image (or None).
        prompt: the instruction.
        stages: detected stages (from the unskipped traces).
        presets: which presets to run.
        **trace_kwargs: forwarded to :func:`~lvlm_kit.trace.trace` (``max_new_tokens``...).

    Returns:
        ``{preset: Trace}``; each trace's ``meta["skipped_layers"]`` lists what was skipped.
    """
    from .trace import trace

    return {
        name: trace(loaded, image, prompt, skip=skip_preset(stages, name), **trace_kwargs)
        for name in presets
    }
