"""Load a model, its processor and its anatomy from a hub id or a local folder.

``load_model("llava-hf/llava-1.5-7b-hf", quantization="4bit")`` and the shipped testbed
(``load_model("testbed")``, its base language model ``load_model("testbed-llm")``) go
through the same code: transformers' ``from_pretrained`` resolves both, so nothing here
depends on where the files came from.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .anatomy import FAMILIES, Anatomy, check_supported, resolve_anatomy
from .lens import Lens, NormPolicy
from .surgery import ResidualRecorder

#: dtype names accepted by :func:`load_model`, mapped in this one place.
DTYPES: dict[str, Any] = {
    "auto": "auto",
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
_HUB_KWARGS = ("revision", "cache_dir", "token", "local_files_only")
QUANTIZATIONS: tuple[str | None, ...] = (None, "4bit", "nf4", "fp4", "8bit")

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Where the testbed's weights live inside the package (written by lvlm_kit.testbed.train).
TESTBED_WEIGHTS = Path(__file__).resolve().parent / "testbed" / "weights"
#: Named shortcuts for the models shipped in the package.
SHORTCUTS: dict[str, Path] = {
    "testbed": TESTBED_WEIGHTS / "lvlm",
    "testbed-llm": TESTBED_WEIGHTS / "llm",
}
#: Short names of the paper's models -> their hub ids.
PRESETS: dict[str, str] = {
    "llava-1.5-7b": "llava-hf/llava-1.5-7b-hf",
    "llava-1.5-13b": "llava-hf/llava-1.5-13b-hf",
}
#: The language model each LVLM was built on (the paper's §6 compares the two).
BASE_LLMS: dict[str, str] = {
    "testbed": "testbed-llm",
    "llava-hf/llava-1.5-7b-hf": "lmsys/vicuna-7b-v1.5",
    "llava-hf/llava-1.5-13b-hf": "lmsys/vicuna-13b-v1.5",
}


def base_llm(model: str) -> str:
    """The base language model of ``model`` (a shortcut, preset or hub id).

    Raises:
        KeyError: a model whose base LLM the kit does not know (:data:`BASE_LLMS`).
    """
    key = PRESETS.get(str(model), str(model))
    if key not in BASE_LLMS:
        raise KeyError(
            f"the base LLM of {model!r} is not known to the kit (it knows {sorted(BASE_LLMS)}); "
            "name it yourself, e.g. LLM_MODEL='lmsys/vicuna-7b-v1.5', or None for the LVLM's "
            "own decoder without an image."
        )
    return BASE_LLMS[key]


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

    errors = {"expected": error(lens.project(normed))}
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


def resolve_source(id_or_dir: str | Path) -> str:
    """Turn a shortcut, folder or hub id into what ``from_pretrained`` takes.

    A preset (:data:`PRESETS`, e.g. ``"llava-1.5-7b"``) becomes its hub id. A name is a
    local folder when it exists on disk or starts with ``.``, ``/`` or ``~``; every other
    name (``llava-hf/llava-1.5-7b-hf``, ``lmsys/vicuna-7b-v1.5``) is a hub id,
    resolved by transformers from the cache or the hub.

    Raises:
        FileNotFoundError: a path-like name that does not exist, a folder without
            ``config.json``, or a shortcut whose model is missing.
    """
    key = PRESETS.get(str(id_or_dir), str(id_or_dir))
    if key in SHORTCUTS:
        path = SHORTCUTS[key]
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"the '{key}' model is not at {path}. Build it with "
                "`python -m lvlm_kit.testbed.train` (see README)."
            )
        return str(path)
    path = Path(key).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"model folder '{path}' has no config.json; point at a folder written by "
                "save_pretrained()."
            )
        return str(path)
    if isinstance(id_or_dir, Path) or key.startswith((".", "/", "~")):
        raise FileNotFoundError(
            f"model folder '{path}' does not exist. Pass an existing folder, a hub id such as "
            f"'llava-hf/llava-1.5-7b-hf', or a shortcut: {sorted(SHORTCUTS)}."
        )
    return key


def check_quantization_name(quantization: str | None) -> None:
    """Raise ``ValueError`` for a quantization name that is not one of :data:`QUANTIZATIONS`."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization={quantization!r} is unknown; use one of {QUANTIZATIONS}.")


def quantization_config(
    quantization: str | None,
    compute_dtype: torch.dtype = torch.bfloat16,
    skip_modules: list[str] | None = None,
):
    """The ``BitsAndBytesConfig`` for a quantization name, or None.

    Names: ``"4bit"`` (NF4 with double quantization, the usual QLoRA / Colab setting),
    ``"nf4"`` and ``"fp4"`` (4-bit without double quantization), ``"8bit"`` (LLM.int8).

    Args:
        quantization: one of :data:`QUANTIZATIONS`.
        compute_dtype: dtype of the 4-bit matrix products.
        skip_modules: module names kept in full precision (transformers'
            ``llm_int8_skip_modules``, used by 4-bit too); the language head is always kept.

    Raises:
        ValueError: an unknown quantization name.
    """
    check_quantization_name(quantization)
    if quantization is None:
        return None
    from transformers import BitsAndBytesConfig

    skip = {"llm_int8_skip_modules": ["lm_head", *skip_modules]} if skip_modules else {}
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, **skip)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="fp4" if quantization == "fp4" else "nf4",
        bnb_4bit_use_double_quant=quantization == "4bit",
        bnb_4bit_compute_dtype=compute_dtype,
        **skip,
    )


def check_quantization_runs(quantization: str | None) -> None:
    """Raise one clear error when bitsandbytes, needed for ``quantization``, cannot import."""
    if quantization is None:
        return
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:
        raise RuntimeError(
            f"quantization={quantization!r} needs the bitsandbytes package, which failed to "
            f"import ({exc}). Install it (`pip install bitsandbytes`) or load with "
            "quantization=None and dtype='bfloat16'."
        ) from None


#: bitsandbytes' 4-bit CPU kernel (used where the CPU has AVX512-BF16) packs weights in
#: blocks: a quantized linear layer needs in_features divisible by 64 and out_features by 32.
CPU_4BIT_IN, CPU_4BIT_OUT = 64, 32


def _skipped(name: str, patterns: list[str]) -> bool:
    """Whether module ``name`` matches a skip pattern (a dotted part of its path)."""
    return any(f".{p}." in f".{name}." for p in patterns)


def _skeleton(cls: Any, config: Any) -> nn.Module:
    """The model built on the ``meta`` device: its module tree and shapes, no memory."""
    with torch.device("meta"):
        build = cls.from_config if hasattr(cls, "from_config") else cls._from_config
        return build(config)


def expand_skip_modules(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Full module paths for ``skip_modules`` patterns (a dotted part of a path each).

    transformers keeps a module in full precision only when a pattern matches its path from
    the start or as a suffix, so ``"vision_tower"`` alone would quantize
    ``model.vision_tower...``; this turns each pattern into the paths it names
    (``"model.vision_tower"``), the way :func:`cpu_4bit_blockers` reads it.

    Args:
        model: the model or its ``meta`` skeleton.
        patterns: module names or dotted parts of paths, e.g. ``["vision_tower"]``.

    Returns:
        The distinct path prefixes that end with a pattern, sorted.

    Raises:
        TypeError: ``patterns`` is a single string, or holds something else than names.
        ValueError: a pattern names no module (the model's top-level modules are listed).
    """
    if isinstance(patterns, str) or not all(isinstance(p, str) and p.strip() for p in patterns):
        raise TypeError(
            f"skip_modules must be a list of module names, e.g. ['vision_tower'], got {patterns!r}."
        )
    names = [n for n, _ in model.named_modules() if n]
    out: set[str] = set()
    for p in patterns:
        hits = {n[: f".{n}.".index(f".{p}.") + len(p)] for n in names if f".{p}." in f".{n}."}
        if not hits:
            top = sorted({n.split(".")[0] for n in names} | {n for n in names if n.count(".") == 1})
            raise ValueError(
                f"skip_modules entry {p!r} names no module of {type(model).__name__}; its modules "
                f"include {top[:12]}."
            )
        out |= hits
    return sorted(out)


def cpu_4bit_blockers(model: nn.Module, skip_modules: list[str] | None = None) -> dict[str, str]:
    """Linear layers that bitsandbytes' packed 4-bit CPU kernel cannot run.

    Args:
        model: the model, on any device (a ``meta``-device skeleton is enough).
        skip_modules: patterns of modules kept in full precision (see
            :func:`quantization_config`); the language head is always kept.

    Returns:
        ``{module name: "in -> out"}`` for each linear layer whose shape the kernel rejects.
    """
    patterns = ["lm_head", *(skip_modules or [])]
    return {
        name: f"{m.in_features} -> {m.out_features}"
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear)
        and not _skipped(name, patterns)
        and (m.in_features % CPU_4BIT_IN or m.out_features % CPU_4BIT_OUT)
    }


def _cpu_packs_4bit() -> bool:
    """True where bitsandbytes runs 4-bit inference through its packed AVX512-BF16 kernel."""
    try:
        from bitsandbytes.functional import has_avx512bf16

        return bool(has_avx512bf16())
    except Exception:  # older bitsandbytes: no packed CPU path
        return False


def check_quantizable(
    cls: Any, config: Any, quantization: str | None, skip_modules: list[str] | None, on_cpu: bool
) -> None:
    """Raise one clear error, before any weight loads, when 4-bit cannot run here.

    Builds the model's skeleton on the ``meta`` device (no memory) and lists the linear
    layers bitsandbytes' 4-bit CPU kernel rejects, with the fix.

    Raises:
        ValueError: names the modules, their shapes and the ``skip_modules`` that keeps
            them in full precision.
    """
    if quantization in (None, "8bit") or not on_cpu or not _cpu_packs_4bit():
        return
    skeleton = _skeleton(cls, config)
    blockers = cpu_4bit_blockers(skeleton, skip_modules)
    if not blockers:
        return
    kinds = sorted({name.rsplit(".", 1)[-1] for name in blockers})
    shown = "; ".join(f"{n} ({s})" for n, s in list(blockers.items())[:4])
    more = f" and {len(blockers) - 4} more" if len(blockers) > 4 else ""
    raise ValueError(
        f"quantization={quantization!r} cannot run on this CPU: bitsandbytes' 4-bit CPU kernel "
        f"needs linear layers with in_features divisible by {CPU_4BIT_IN} and out_features by "
        f"{CPU_4BIT_OUT}, and {len(blockers)} are not: {shown}{more}. Keep them in full "
        f"precision with load_model(..., skip_modules={kinds}), use quantization='8bit', or "
        "run on a GPU."
    )


class _Once(logging.Filter):
    """Let a log message that starts with ``prefix`` through once per process."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix, self.seen = prefix, False

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith(self.prefix):
            return True
        seen, self.seen = self.seen, True
        return not seen


#: bitsandbytes logs this at every 8-bit matrix product whose input is not float16 (a
#: notebook's output grew to 6 MB of it); once says it.
_INT8_CAST = _Once("MatMul8bitLt: inputs will be cast")


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


def check_packages(model_type: str) -> None:
    """Raise one clear error, before loading, when a family's processor needs a missing package."""
    import importlib.util

    def usable(package: str) -> bool:
        if package == "torchvision":  # present is not enough: it must match this torch
            return torchvision_available()
        return importlib.util.find_spec(package) is not None

    missing = [p for p in FAMILIES[model_type].packages if not usable(p)]
    if missing:
        raise RuntimeError(
            f"model_type={model_type!r} needs the package(s) {missing} for its processor, "
            "and they do not import here. Install them (for torchvision, the build that "
            f"matches your torch: `pip install {' '.join(missing)}` next to the same torch "
            "release) and load again."
        )


def torchvision_available() -> bool:
    """Whether torchvision imports beside this torch (transformers' video processors need it)."""
    from transformers.utils import is_torchvision_available

    return bool(is_torchvision_available())


def _without_video(cls: type) -> tuple[type, dict[str, Any]]:
    """``cls``, a processor class, with its video processor dropped (images and text only).

    The image-text processors of Qwen2/2.5/3-VL, LLaVA-OneVision, SmolVLM and InternVL
    also hold a video processor, which transformers builds only with torchvision. Images
    never pass through it, so without torchvision the kit builds the processor without it:
    the image processor (its PIL backend), the tokenizer and the chat template are the
    same, and so are the image tokens it inserts.

    Returns:
        ``(class, kwargs)``: the class to build (``cls`` itself when it has no video
        processor) and the keyword arguments its constructor then needs
        (``video_processor=None``, required by some classes and never used).
    """
    attrs = [a for a in cls.get_attributes() if a != "video_processor"]
    if len(attrs) == len(cls.get_attributes()):
        return cls, {}
    images_only = type(
        cls.__name__,
        (cls,),
        {
            "get_attributes": classmethod(lambda _: list(attrs)),
            "__module__": cls.__module__,
            "__doc__": f"{cls.__name__} for images and text (no video processor: no torchvision).",
        },
    )
    return images_only, {"video_processor": None}


def build_processor(class_name: str, **parts: Any) -> Any:
    """Build a transformers processor class from its parts.

    Args:
        class_name: the processor class, e.g. ``"Qwen2VLProcessor"``.
        **parts: its ``image_processor``, ``tokenizer``, ``chat_template``... Without a
            ``video_processor`` the processor is built for images and text only (see
            :func:`_without_video`), with or without torchvision.

    Returns:
        The processor.
    """
    import transformers

    cls = getattr(transformers, class_name)
    if parts.get("video_processor") is None:
        cls, extra = _without_video(cls)
        parts.update(extra)
    return cls(**parts)


def load_processor(source: str, kind: str, **hub: Any) -> Any:
    """The processor (an LVLM's) or tokenizer (a text model's) saved with a model.

    Without torchvision, an image-text processor that would also load a video processor is
    loaded without it (see :func:`build_processor`).
    """
    from transformers import AutoProcessor, AutoTokenizer

    if kind != "vision":
        return AutoTokenizer.from_pretrained(source, **hub)
    if torchvision_available():
        return AutoProcessor.from_pretrained(source, **hub)
    import transformers
    from transformers.models.auto.processing_auto import processor_class_from_name

    config = transformers.ProcessorMixin.get_processor_dict(source, **hub)[0]
    name = config.get("processor_class")
    cls = processor_class_from_name(name) if name else None
    if cls is None:
        return AutoProcessor.from_pretrained(source, **hub)
    images_only, extra = _without_video(cls)
    return images_only.from_pretrained(source, **extra, **hub)


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
        if _INT8_CAST not in bnb_log.filters:
            bnb_log.addFilter(_INT8_CAST)
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
        skip_modules = expand_skip_modules(_skeleton(cls, config), skip_modules)
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
