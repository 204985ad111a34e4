"""Load a model, its processor and its anatomy from a hub id or a local folder.

``load_model("llava-hf/llava-1.5-7b-hf", quantization="4bit")`` and the shipped testbed
(``load_model("testbed")``, its base language model ``load_model("testbed-llm")``) go
through the same code: transformers' ``from_pretrained`` resolves both, so nothing here
depends on where the files came from.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .anatomy import Anatomy, check_supported, resolve_anatomy
from .lens import Lens, NormPolicy
from .processors import check_packages, load_processor
from .quantization import (
    INT8_CAST,
    check_quantizable,
    check_quantization_name,
    check_quantization_runs,
    expand_skip_modules,
    quantization_config,
    skeleton,
)
from .sources import resolve_source
from .surgery import ResidualRecorder

#: dtype names accepted by :func:`load_model`, mapped in this one place.
DTYPES: dict[str, Any] = {
    "auto": "auto",
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
_HUB_KWARGS = ("revision", "cache_dir", "token", "local_files_only")


@dataclass
class LoadedModel:
    """A model ready for analysis."""

    model: nn.Module  # the transformers model, in eval mode
    processor: Any  # a ProcessorMixin for LVLMs, a tokenizer for plain causal LMs
    anatomy: Anatomy  # where its layers, norm and head are
    name: str  # the id or folder it was loaded from
    _lenses: dict[str, Lens] = field(default_factory=dict, repr=False, compare=False)
    _head_checked: bool = field(default=False, repr=False, compare=False)

    def lens(self, norm: NormPolicy = "final_norm") -> Lens:
        """The model's float32 :class:`~lvlm_kit.lens.Lens` for ``norm``, built on first use.

        The lens holds a float32 copy of the final norm and language head, made once per
        norm policy (about 525 MB for LLaVA-1.5-7B's head in bf16 or 4-bit, none for a
        float32 model). The first lens is checked against the model's own logits
        (:func:`check_head`). After changing the model's head or norm weights, call
        :meth:`forget_lens` so the next call rebuilds and re-checks it.

        Raises:
            HeadMismatchError: the lens's last layer does not reproduce the model's logits.
        """
        if norm not in self._lenses:
            lens = Lens(self.anatomy, norm)
            if not self._head_checked:
                check_head(self, lens)
                self._head_checked = True
            self._lenses[norm] = lens
        return self._lenses[norm]

    def forget_lens(self) -> None:
        """Drop the cached lenses (their float32 copies are rebuilt and checked on next use)."""
        self._lenses.clear()
        self._head_checked = False

    @property
    def quantization(self) -> str | None:
        """``"nf4"``, ``"fp4"`` (with ``+dq`` for double quantization), ``"8bit"``, or None."""
        q = getattr(self.model.config, "quantization_config", None)
        if q is None:
            return None
        q = q if isinstance(q, dict) else q.to_dict()
        if q.get("load_in_8bit"):
            return "8bit"
        if q.get("load_in_4bit"):
            kind = q.get("bnb_4bit_quant_type", "nf4")
            return f"{kind}+dq" if q.get("bnb_4bit_use_double_quant") else kind
        return str(q.get("quant_method", "quantized"))

    @property
    def precision(self) -> str:
        """The weights' dtype, or quantization and compute dtype, e.g. ``"nf4/torch.float32"``."""
        dtype = str(self.model.dtype)
        return dtype if self.quantization is None else f"{self.quantization}/{dtype}"

    @property
    def tokenizer(self) -> Any:
        """The tokenizer (the processor's, for LVLMs)."""
        return getattr(self.processor, "tokenizer", self.processor)

    @property
    def is_vision(self) -> bool:
        """True for vision-language models."""
        return self.anatomy.kind == "vision"

    @property
    def input_device(self) -> torch.device:
        """Device of the input embeddings (where input tensors must go)."""
        return self.anatomy.embed_tokens.weight.device


class HeadMismatchError(RuntimeError):
    """The lens's last layer does not reproduce the model's own logits."""


def _config_value(model: nn.Module, name: str) -> float | None:
    """``name`` from the model's config, its text config, or the model itself, if set."""
    config = model.config
    for holder in (config, getattr(config, "text_config", None), model):
        value = getattr(holder, name, None) if holder is not None else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value:
            return float(value)
    return None


def check_head(loaded: LoadedModel, lens: Lens, n_tokens: int = 6) -> dict[str, float]:
    """Check that ``lens`` at the last layer reproduces the model's logits on one forward pass.

    Runs the model on ``n_tokens`` text tokens, decodes the last decoder layer's states with
    the lens, and compares them with the model's logits. The lens applies the transform that
    :data:`~lvlm_kit.anatomy.FAMILIES` expects for this transformers release (bias, logit
    scale, soft-cap); where it disagrees, the transforms the config could mean (none, the
    logit scale, the soft-cap) are measured too, so the error says which one the model's
    forward applies.

    Args:
        loaded: the model.
        lens: its lens (either norm policy: both agree at the last layer).
        n_tokens: length of the probe sequence.

    Returns:
        The largest absolute difference per transform tried, relative to ``1 + max|logits|``
        (only ``"expected"`` when that one matched).

    Raises:
        HeadMismatchError: the expected transform is off by more than the tolerance (1e-3 in
            float32, 3e-2 for half precision or quantized weights); the message names the
            model class, the transformers version and what the model's logits match.
    """
    import transformers

    anatomy, model = loaded.anatomy, loaded.model
    ids = [i for i in range(1, min(lens.vocab_size, 64)) if i != anatomy.image_token_id]
    ids = torch.tensor([ids[:n_tokens]], device=loaded.input_device)
    with torch.inference_mode(), ResidualRecorder(anatomy, all_positions=True) as rec:
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0]
    logits = logits.to(lens.device, torch.float32)  # [T, V]
    normed = lens.normed(rec.stacked()[0][-1], layer=anatomy.n_layers)  # [T, d]
    scale_of = 1.0 + float(logits.abs().max())
    exact = model.dtype == torch.float32 and loaded.quantization is None
    tol = 1e-3 if exact else 3e-2

    def error(product: torch.Tensor) -> float:
        return float((product - logits).abs().max()) / scale_of

    errors = {"expected": error(lens.unembed(normed))}
    if errors["expected"] <= tol:
        return errors
    raw = normed @ lens.weight.T + (0 if lens.bias is None else lens.bias)
    errors["none"] = error(raw)
    scale = _config_value(model, "logit_scale")
    cap = _config_value(model, "final_logit_softcapping")
    if scale is not None:
        errors[f"logit scale {scale:g}"] = error(raw * scale)
    if cap is not None:
        errors[f"soft-cap {cap:g}"] = error(torch.tanh(raw / cap) * cap)
    matches = [name for name, e in errors.items() if name != "expected" and e <= tol]
    expected = (
        f"soft-cap {anatomy.softcap:g}"
        if anatomy.softcap
        else f"logit scale {anatomy.logit_scale:g}"
        if anatomy.logit_scale
        else "none"
    )
    found = (
        f"the model's logits match: {matches[0]}"
        if matches
        else ("no transform the config names (none, logit scale, soft-cap) matches the logits")
    )
    raise HeadMismatchError(
        f"the lens's last layer does not reproduce the logits of {type(model).__name__} "
        f"(model_type={anatomy.model_type!r}) under transformers {transformers.__version__}: "
        f"lvlm_kit.anatomy.FAMILIES expects the head transform {expected} (error "
        f"{errors['expected']:.3g} of the logits' scale, tolerance {tol:g}); {found}. Update "
        f"FAMILIES[{anatomy.model_type!r}] (its `softcap`, `scale` or `since`) for this "
        "transformers release, or install the release the lock names (requirements/)."
    )


def check_dtype(dtype: str | torch.dtype) -> str | torch.dtype:
    """A dtype name of :data:`DTYPES` or one of its torch dtypes, as ``from_pretrained`` takes it.

    Raises:
        ValueError: any other value.
    """
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(
        f"dtype={dtype!r} is unknown; use one of {tuple(DTYPES)} or torch.float32 / "
        "torch.bfloat16 / torch.float16."
    )


def check_device_map(device_map: str | dict | None) -> None:
    """Raise one clear error when ``device_map`` asks for a GPU this machine lacks."""
    values = device_map.values() if isinstance(device_map, dict) else [device_map]
    wants_cuda = any(
        (isinstance(v, int) and not isinstance(v, bool)) or str(v).startswith("cuda")
        for v in values
        if v is not None
    )
    if wants_cuda and not torch.cuda.is_available():
        raise RuntimeError(
            f"device_map={device_map!r} puts the model on a CUDA GPU, and this machine has "
            "none. Use device_map=None or 'cpu' (in a notebook: DEVICE='auto' or 'cpu')."
        )


def load_model(
    id_or_dir: str | Path,
    quantization: str | None = None,
    dtype: str | torch.dtype = "auto",
    device_map: str | dict | None = None,
    skip_modules: list[str] | None = None,
    **from_pretrained_kwargs: Any,
) -> LoadedModel:
    """Load a supported model with its processor and anatomy.

    Args:
        id_or_dir: hub id (``"llava-hf/llava-1.5-7b-hf"``), local folder, or shortcut
            (``"testbed"``).
        quantization: None, ``"4bit"`` (NF4, double quant), ``"nf4"``, ``"fp4"`` or
            ``"8bit"`` (bitsandbytes; on a GPU, and on the CPU with bitsandbytes >= 0.49).
        dtype: ``"auto"`` (the checkpoint's), ``"float32"``, ``"bfloat16"`` or ``"float16"``
            (or the torch dtype itself).
        device_map: passed to accelerate (``"auto"``, ``"cpu"``, a dict...). None puts the
            whole model on the GPU if there is one, else the CPU (quantized loads too).
        skip_modules: with quantization, module names kept in full precision (e.g.
            ``["down_proj"]`` or ``["vision_tower"]``).
        **from_pretrained_kwargs: forwarded to ``from_pretrained`` (e.g. ``revision``).

    Returns:
        A :class:`LoadedModel` in eval mode.

    Raises:
        FileNotFoundError: a missing local folder or shortcut.
        ValueError: an unknown dtype or quantization.
        RuntimeError: quantization requested without bitsandbytes, or a CUDA
            ``device_map`` without a GPU.
        ValueError: also for 4-bit on a CPU whose kernel rejects some layer shapes (the
            error names them and the ``skip_modules`` that fixes it).
        NotImplementedError: an unsupported architecture (before any weight is loaded).
        OSError: a hub id that cannot be found locally or downloaded.
        HeadMismatchError: the lens's last layer does not reproduce the model's logits
            (:func:`check_head`).
    """
    import transformers
    from transformers import AutoConfig

    torch_dtype = check_dtype(dtype)
    check_device_map(device_map)
    on_cpu = not torch.cuda.is_available() or device_map == "cpu"
    if skip_modules and quantization is None:
        raise ValueError("skip_modules only applies to a quantized load; pass quantization too.")
    if torch_dtype == "auto":  # the 4-bit products: float32 on the CPU, bfloat16 on a GPU
        compute = torch.float32 if on_cpu else torch.bfloat16
    else:
        compute = torch_dtype
    check_quantization_name(quantization)
    check_quantization_runs(quantization)
    if quantization == "8bit":
        bnb_log = logging.getLogger("bitsandbytes.autograd._functions")
        if INT8_CAST not in bnb_log.filters:
            bnb_log.addFilter(INT8_CAST)
    source = resolve_source(id_or_dir)
    # Where to find the files: also for the config and the processor, not only the weights.
    hub = {k: v for k, v in from_pretrained_kwargs.items() if k in _HUB_KWARGS}
    try:
        config = AutoConfig.from_pretrained(source, **hub)
    except OSError as exc:
        raise OSError(
            f"could not load a model config for '{source}' from a local folder, the cache or "
            f"the hub ({exc.__class__.__name__}). Check the id, your network/HF_HUB_OFFLINE, "
            "or pass a local folder."
        ) from exc
    kind = check_supported(config.model_type)
    if kind == "vision":
        cls = transformers.AutoModelForImageTextToText
    else:
        cls = transformers.AutoModelForCausalLM
    check_packages(config.model_type)
    if skip_modules is not None:
        skip_modules = expand_skip_modules(skeleton(cls, config), skip_modules)
    bnb = quantization_config(quantization, compute, skip_modules)
    check_quantizable(cls, config, quantization, skip_modules, on_cpu)
    kwargs: dict[str, Any] = {"dtype": torch_dtype, **from_pretrained_kwargs}
    if bnb is not None:
        kwargs["quantization_config"] = bnb
        kwargs["device_map"] = device_map or ("cpu" if on_cpu else "auto")
    elif device_map is not None:
        kwargs["device_map"] = device_map
    model = cls.from_pretrained(source, **kwargs)
    if bnb is None and device_map is None:
        model.to("cuda" if torch.cuda.is_available() else "cpu")
    model.eval()
    processor = load_processor(source, kind, **hub)
    anatomy = resolve_anatomy(model)
    loaded = LoadedModel(model=model, processor=processor, anatomy=anatomy, name=str(id_or_dir))
    loaded.lens()  # checks the head against the model's logits (check_head)
    return loaded
