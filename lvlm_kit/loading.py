"""Load a model, its processor and its anatomy from a hub id or a local folder.

``load_model("llava-hf/llava-1.5-7b-hf", quantization="4bit")`` and
``load_model("data/testbed/model")`` (or the shortcut ``load_model("testbed")``) go
through the same code: transformers' ``from_pretrained`` resolves both, so nothing here
depends on where the files came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .anatomy import Anatomy, check_supported, resolve_anatomy
from .lens import Lens, NormPolicy

#: dtype names accepted by :func:`load_model`, mapped in this one place.
DTYPES: dict[str, Any] = {
    "auto": "auto",
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
_VISION_CLASSES = {
    "llava": "LlavaForConditionalGeneration",
    "llava_next": "LlavaNextForConditionalGeneration",
}
_HUB_KWARGS = ("revision", "cache_dir", "token", "local_files_only")
QUANTIZATIONS: tuple[str | None, ...] = (None, "4bit", "8bit")

#: Named shortcuts for models shipped in this repository.
REPO_ROOT = Path(__file__).resolve().parent.parent
SHORTCUTS: dict[str, Path] = {"testbed": REPO_ROOT / "data" / "testbed" / "model"}


@dataclass
class LoadedModel:
    """A model ready for analysis."""

    model: nn.Module  # the transformers model, in eval mode
    processor: Any  # a ProcessorMixin for LVLMs, a tokenizer for plain causal LMs
    anatomy: Anatomy  # where its layers, norm and head are
    name: str  # the id or folder it was loaded from
    _lenses: dict[str, Lens] = field(default_factory=dict, repr=False, compare=False)

    def lens(self, norm: NormPolicy = "final_norm") -> Lens:
        """The model's float32 :class:`~lvlm_kit.lens.Lens` for ``norm``, built on first use.

        The lens holds a float32 copy of the final norm and language head, made once per
        norm policy (about 525 MB for LLaVA-1.5-7B's head in bf16 or 4-bit, none for a
        float32 model). After changing the model's head or norm weights, call
        :meth:`forget_lens` so the next call rebuilds it.
        """
        if norm not in self._lenses:
            self._lenses[norm] = Lens(self.anatomy, norm)
        return self._lenses[norm]

    def forget_lens(self) -> None:
        """Drop the cached lenses (their float32 copies are rebuilt on next use)."""
        self._lenses.clear()

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


def resolve_source(id_or_dir: str | Path) -> str:
    """Turn a shortcut, folder or hub id into what ``from_pretrained`` takes.

    A name is a local folder when it exists on disk or starts with ``.``, ``/`` or ``~``;
    every other name (``llava-hf/llava-1.5-7b-hf``, ``lmsys/vicuna-7b-v1.5``) is a hub id,
    resolved by transformers from the cache or the hub.

    Raises:
        FileNotFoundError: a path-like name that does not exist, a folder without
            ``config.json``, or a shortcut whose model is missing.
    """
    key = str(id_or_dir)
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


def quantization_config(quantization: str | None, compute_dtype: torch.dtype = torch.bfloat16):
    """The ``BitsAndBytesConfig`` for ``"4bit"`` (NF4, double quant) or ``"8bit"``, or None.

    Raises:
        ValueError: an unknown quantization name.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization={quantization!r} is unknown; use one of {QUANTIZATIONS}.")
    if quantization is None:
        return None
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def check_quantization_runs(quantization: str | None) -> None:
    """Raise one clear error when bitsandbytes cannot run the requested quantization here."""
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
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"quantization={quantization!r} needs bitsandbytes on a CUDA GPU, and this machine "
            "has none. Load with quantization=None (dtype='bfloat16' halves memory) or run on "
            "a GPU machine."
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
    **from_pretrained_kwargs: Any,
) -> LoadedModel:
    """Load a supported model with its processor and anatomy.

    Args:
        id_or_dir: hub id (``"llava-hf/llava-1.5-7b-hf"``), local folder, or shortcut
            (``"testbed"``).
        quantization: None, ``"4bit"`` or ``"8bit"`` (bitsandbytes, CUDA only).
        dtype: ``"auto"`` (the checkpoint's), ``"float32"``, ``"bfloat16"`` or ``"float16"``
            (or the torch dtype itself).
        device_map: passed to accelerate (``"auto"``, ``"cpu"``, a dict...). None puts the
            whole model on the GPU if there is one, else the CPU. Quantized loads default
            to ``"auto"``.
        **from_pretrained_kwargs: forwarded to ``from_pretrained`` (e.g. ``revision``).

    Returns:
        A :class:`LoadedModel` in eval mode.

    Raises:
        FileNotFoundError: a missing local folder or shortcut.
        ValueError: an unknown dtype or quantization.
        RuntimeError: quantization requested where bitsandbytes cannot run, or a CUDA
            ``device_map`` without a GPU.
        NotImplementedError: an unsupported architecture (before any weight is loaded).
        OSError: a hub id that cannot be found locally or downloaded.
    """
    import transformers
    from transformers import AutoConfig, AutoProcessor, AutoTokenizer

    torch_dtype = check_dtype(dtype)
    bnb = quantization_config(
        quantization, torch.bfloat16 if torch_dtype == "auto" else torch_dtype
    )
    check_quantization_runs(quantization)
    check_device_map(device_map)
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
        cls = getattr(transformers, _VISION_CLASSES[config.model_type])
    else:
        cls = transformers.AutoModelForCausalLM
    kwargs: dict[str, Any] = {"dtype": torch_dtype, **from_pretrained_kwargs}
    if bnb is not None:
        kwargs["quantization_config"] = bnb
        kwargs["device_map"] = device_map or "auto"
    elif device_map is not None:
        kwargs["device_map"] = device_map
    model = cls.from_pretrained(source, **kwargs)
    if bnb is None and device_map is None:
        model.to("cuda" if torch.cuda.is_available() else "cpu")
    model.eval()
    processor = (AutoProcessor if kind == "vision" else AutoTokenizer).from_pretrained(
        source, **hub
    )
    anatomy = resolve_anatomy(model)
    return LoadedModel(model=model, processor=processor, anatomy=anatomy, name=str(id_or_dir))
