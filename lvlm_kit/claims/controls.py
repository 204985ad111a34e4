"""Noise controls: copies of a model that keep its architecture and lose what it learnt.

- :func:`random_control`: re-initialised (the config's own initialisation);
- :func:`permuted_control`: each weight tensor's entries permuted (its norm and value
  distribution kept, its structure lost);
- :func:`layer_shuffled_control`: the model's own layers run in a random order, for the
  claims about where in the depth something happens;
- :func:`control_traces`: every control traced on the model's images, teacher-forced on
  the model's words where a statistic needs them.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..loading import LoadedModel
from ..tracing import Trace

#: Added to the seed of :func:`random_control` and :func:`permuted_control`.
CONTROL_SEED_OFFSET = 7919
#: The noise controls every paper claim is measured on (:func:`controls`).
CONTROL_KINDS: tuple[str, ...] = ("re-initialised", "permuted")


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
    from ..anatomy import resolve_anatomy

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


def layer_shuffled_control(loaded: LoadedModel, seed: int = 0) -> LoadedModel:
    """A copy of ``loaded`` whose decoder layers run in a seeded random order.

    Every weight is the model's own, and each layer does what it learnt; only the order is
    lost. The control of a claim about where in the depth something happens (a rise at the
    critical layers, a step in the JS curve, three stages in sequence): what still holds
    with the layers shuffled is not about their order. The lens reads the layers in the
    order they run.

    Raises:
        ValueError: a quantized model, or one with fewer than two decoder layers.
    """
    from ..anatomy import resolve_anatomy

    if loaded.quantization is not None:
        raise ValueError(
            f"layer_shuffled_control needs full-precision weights; {loaded.name} is "
            f"{loaded.quantization}. Load it without quantization for the control."
        )
    n = loaded.anatomy.n_layers
    if n < 2:
        raise ValueError(f"{loaded.name} has {n} decoder layer: there is no order to shuffle.")
    fresh = _fresh_copy(loaded)
    fresh.load_state_dict(loaded.model.state_dict())
    gen = torch.Generator().manual_seed(CONTROL_SEED_OFFSET + seed)
    order = list(range(n))
    while order == list(range(n)):
        order = torch.randperm(n, generator=gen).tolist()
    layers = resolve_anatomy(fresh).layers
    moved = [layers[i] for i in order]
    for j, layer in enumerate(moved):
        layers[j] = layer
    return _loaded(loaded, fresh, "layer-shuffled")


def controls(loaded: LoadedModel, seed: int = 0, order: bool = False) -> dict[str, LoadedModel]:
    """The noise controls of ``loaded``, by name (:data:`CONTROL_KINDS`).

    ``"re-initialised"`` (:func:`random_control`) and ``"permuted"``
    (:func:`permuted_control`): a claim is shown only when the model beats both. With
    ``order`` (claims about where in the depth something happens), also
    ``"layer-shuffled"`` (:func:`layer_shuffled_control`).
    """
    out = {
        "re-initialised": random_control(loaded, seed),
        "permuted": permuted_control(loaded, seed),
    }
    if order:
        out["layer-shuffled"] = layer_shuffled_control(loaded, seed)
    return out


def control_traces(
    loaded: LoadedModel,
    model_traces: Sequence[Trace],
    images: Sequence[Any],
    prompts: str | Sequence[str],
    seed: int = 0,
    progress: bool = True,
    forced: bool = True,
    order: bool = False,
    copies: Mapping[str, LoadedModel] | None = None,
    **trace_kw: Any,
) -> dict[str, list[Trace]]:
    """Each noise control of ``loaded`` (:func:`controls`) on the model's images and prompts.

    With ``forced`` (the default) the controls are teacher-forced (``trace(..., force=...)``)
    to emit the model's tokens, so their traces have the same words, word classes and
    objects, and every statistic of the model is defined on them (a random copy left to
    itself says "sun. sun. sun."). Statistics of the emitted token's own trajectory (claims
    1 and 2: its probability rising to the output) need ``forced=False``: a forced token is
    not the control's own prediction, so its last-layer probability is not comparable.

    Args:
        loaded: the model.
        model_traces: the model's traces, one per image.
        images: the images (None entries for text only), in the same order.
        prompts: one prompt, or one per image.
        seed: seed of the controls.
        progress: show progress bars.
        forced: emit the model's tokens; else each control generates greedily (with the
            model's ``max_new_tokens``).
        order: also the layer-shuffled control (:func:`controls`).
        copies: controls already built (name -> model), instead of building them here
            (``seed`` and ``order`` are then not used): one set of copies for several calls.
        **trace_kw: passed to :func:`~lvlm_kit.tracing.trace` (``lens_norm``, ``keep_hidden``).

    Returns:
        Control name -> its traces, in image order.
    """
    from ..runs import trace_images

    if not len(model_traces) == len(images):
        raise ValueError(
            f"got {len(model_traces)} traces and {len(images)} images; pass one trace per image."
        )
    copies = controls(loaded, seed, order) if copies is None else copies
    return {
        name: trace_images(
            control,
            images,
            prompts,
            None if forced else max(t.meta.get("max_new_tokens", t.n_tokens) for t in model_traces),
            force=model_traces if forced else None,
            desc=name,
            progress=progress,
            **trace_kw,
        )
        for name, control in copies.items()
    }
