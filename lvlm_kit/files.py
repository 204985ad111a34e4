"""Writing files so that a reader never sees half of one.

Every file the kit writes goes through :func:`atomic_path`: the content is written to a
temporary file in the destination folder and renamed into place, so a file that exists
is complete, also after a crash or ``kill -9``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds.

    The temporary file is named ``.<name>.<random>.tmp``. If the block raises, it is
    removed and ``path`` is left as it was.

    Example:
        >>> with atomic_path("out/metrics.json") as tmp:
        ...     tmp.write_text("{}")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(folder: str | os.PathLike) -> None:
    """Raise ``OSError`` when no file can be created in ``folder`` (it tries one, and removes it).

    A real write is the only reliable test: permission bits do not bind root, and a
    read-only mount is not visible in them.
    """
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".write-probe.", suffix=".tmp")
    os.close(fd)
    os.unlink(tmp)


def write_json(path: str | os.PathLike, value: Any) -> Path:
    """Write ``value`` as indented JSON to ``path``, atomically (numbers via ``float``)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2, default=float))
    return Path(path)
