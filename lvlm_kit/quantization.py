"""bitsandbytes quantization: the configs, and every check made before a weight loads.

``load_model(..., quantization=...)`` names one of :data:`QUANTIZATIONS`; the checks here
raise one clear error for a missing bitsandbytes, a layer the 4-bit CPU kernel cannot pack,
or ``skip_modules`` patterns that name nothing, before the weights are read.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

QUANTIZATIONS: tuple[str | None, ...] = (None, "4bit", "nf4", "fp4", "8bit")


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


def skeleton(cls: Any, config: Any) -> nn.Module:
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
    meta = skeleton(cls, config)
    blockers = cpu_4bit_blockers(meta, skip_modules)
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
INT8_CAST = _Once("MatMul8bitLt: inputs will be cast")
