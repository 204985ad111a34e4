"""Writing files so that a reader never sees half of one.

Every file the kit writes goes through :func:`atomic_path`: the content is written to a
temporary file in the destination folder and renamed into place, so a file that exists
is complete, also after a crash or ``kill -9``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
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
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes it 0600; a file keeps the umask
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_temp_dir(parent: str | os.PathLike, prefix: str) -> Path:
    """A new folder in ``parent`` with the umask's permissions (``mkdtemp`` gives 0700)."""
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    os.chmod(tmp, 0o777 & ~umask())
    return tmp


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


# ---- folders the kit owns ----------------------------------------------------------------


def _tree(root: Path) -> list[str]:
    """Every file and folder under ``root``, relative, sorted (folders end with ``/``)."""
    return sorted(
        str(p.relative_to(root)) + ("/" if p.is_dir() and not p.is_symlink() else "")
        for p in root.rglob("*")
    )


def read_marker(root: str | os.PathLike, name: str) -> dict | None:
    """The settings a kit-made folder records in its marker file ``name``, if valid.

    A valid marker is ``{"settings": {...}, "files": [...]}``, as :func:`write_kit_folder`
    writes it; anything else (``{}``, ``[]``, ``0``, a hand-made file) is None.
    """
    try:
        marker = json.loads((Path(root) / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = (
        isinstance(marker, dict)
        and set(marker) == {"settings", "files"}
        and isinstance(marker["settings"], dict)
        and isinstance(marker["files"], list)
        and bool(marker["files"])
        and all(isinstance(f, str) for f in marker["files"])
    )
    return marker if ok else None


def _same_files(folder: Path, reference: Path, ignore: str) -> bool:
    """Whether every file under ``folder`` (but ``ignore``) is in ``reference``, byte for byte."""
    for path in folder.rglob("*"):
        if path.is_dir() or path.name == ignore:
            continue
        twin = reference / path.relative_to(folder)
        if path.is_symlink() or not twin.is_file() or twin.read_bytes() != path.read_bytes():
            return False
    return True


def write_kit_folder(
    root: str | os.PathLike,
    marker: str,
    settings: dict,
    write: Callable[[Path, dict], None],
    overwrite: bool = True,
    what: str = "the kit",
    legacy: Callable[[Path], dict | None] | None = None,
) -> Path:
    """Make the folder ``root`` with ``write(folder, settings)``, replacing only what the kit made.

    The folder is written beside ``root`` and renamed into place at the end (an interrupted
    write leaves nothing behind), with a marker file listing ``settings`` and every file
    written. An existing ``root`` is replaced only when its marker is valid, it holds nothing
    the marker does not list, and ``overwrite`` is True; with the same ``settings`` it is
    kept as it is. A folder an older kit wrote (no valid marker) is taken as the kit's only
    when every file in it is, byte for byte, what ``write`` makes for its settings (read
    from its old marker by ``legacy``, else ``settings``).

    Args:
        root: the folder.
        marker: name of the marker file inside it.
        settings: everything the content depends on (JSON-able).
        write: fills the folder it is given, for the settings it is given.
        overwrite: replace an earlier folder of other settings.
        what: who writes it, for the messages (e.g. ``"export_amber"``).
        legacy: reads the settings from an older kit's marker (None when there is none).

    Returns:
        ``root``.

    Raises:
        FileExistsError: ``root`` exists and is not the kit's (no valid marker, and not what
            an older kit wrote), holds files the kit did not write (whatever ``overwrite``
            says), or holds other settings and ``overwrite`` is False.
    """
    root = Path(root)
    settings = json.loads(json.dumps(settings))
    if root.exists():
        found = read_marker(root, marker)
        if found is None:
            old = (legacy(root) if legacy else None) or settings
            reference = make_temp_dir(root.parent, f".{root.name}.check.")
            try:
                write(reference, old)
                ours = _same_files(root, reference, marker)
            finally:
                shutil.rmtree(reference, ignore_errors=True)
            if not ours:
                raise FileExistsError(
                    f"'{root}' exists and was not written by {what} (no valid {marker}, and its "
                    "files are not what the kit writes); the kit never deletes it. Choose "
                    "another folder, or delete it yourself."
                )
            found = {"settings": old, "files": _tree(root)}
        extra = sorted(set(_tree(root)) - {*found["files"], marker})
        if extra:
            raise FileExistsError(
                f"'{root}' holds {len(extra)} file(s) {what} did not write (first: "
                f"{extra[:3]}); the kit never deletes them. Move them out, or choose another "
                "folder."
            )
        if found["settings"] == settings and read_marker(root, marker) is not None:
            return root
        if not overwrite:
            raise FileExistsError(f"'{root}' exists; pass overwrite=True or choose another folder.")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(root.parent, f".{root.name}.")
    try:
        write(tmp, settings)
        (tmp / marker).write_text(
            json.dumps({"settings": settings, "files": _tree(tmp)}), encoding="utf-8"
        )
        if root.exists():
            shutil.rmtree(root)
        tmp.rename(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
