"""The trace file format: one safetensors file, arrays plus a JSON header, written atomically.

:meth:`~lvlm_kit.tracing.Trace.save` and :meth:`~lvlm_kit.tracing.Trace.load` go through
:func:`write` and :func:`read`; :func:`read_meta` reads a file's generation settings without
its arrays (a trace store checks them this way). Every damaged or foreign file raises one
:class:`TraceFileError` naming the file and the fix.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .files import atomic_path

#: The format written into every header; a file without it was not written by this kit.
FORMAT = "lvlm_kit.trace/1"
_META_KEY = "lvlm_kit.trace"


class TraceFileError(ValueError):
    """A trace file that is missing pieces, truncated or corrupt."""


def write(path: str | os.PathLike, tensors: dict[str, torch.Tensor], header: dict) -> Path:
    """Write ``tensors`` and the JSON-able ``header`` to ``path``, atomically.

    Returns:
        The path.
    """
    from safetensors.torch import save_file

    path = Path(path)
    arrays = {name: t.contiguous() for name, t in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(arrays, str(tmp), metadata={_META_KEY: json.dumps({**header, "format": FORMAT})})
    return path


def read(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The header (without ``format``) and the arrays of a file :func:`write` wrote.

    Raises:
        FileNotFoundError: no such file.
        TraceFileError: the file is truncated, corrupt, not a trace, or of another format.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"trace file not found: '{path}'")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = json.loads((f.metadata() or {})[_META_KEY])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as exc:
        raise TraceFileError(
            f"'{path}' is not a readable lvlm_kit trace (truncated or corrupt: "
            f"{exc.__class__.__name__}: {exc}). Delete it and re-run trace(...).save()."
        ) from None
    if not isinstance(header, dict):
        raise TraceFileError(f"'{path}' has a damaged header (not a JSON object); re-create it.")
    if header.pop("format", None) != FORMAT:
        raise TraceFileError(f"'{path}' was not written by this version ({FORMAT}).")
    return header, tensors


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The ``meta`` dict (generation settings) of a saved trace, without reading its arrays.

    Raises:
        TraceFileError: not a readable trace file.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})[_META_KEY]).get("meta", {})
    except Exception as exc:
        raise TraceFileError(
            f"'{path}' is not a readable lvlm_kit trace ({exc.__class__.__name__}: {exc})."
        ) from None
    return meta if isinstance(meta, dict) else {}
