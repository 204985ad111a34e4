"""A trace store: one folder, one ``<item id>.safetensors`` Trace per dataset item.

:func:`trace_dataset` fills a store (what ``lvlm-kit trace`` runs), :func:`evaluate_store`
scores the generated texts in it against AMBER annotations (``lvlm-kit evaluate``).

What a store promises:

- **Kill-safe.** Each trace is written atomically (a temporary file renamed into place), so
  a file that exists is complete; a run killed at any moment (``kill -9`` included) leaves
  no half file, and a rerun resumes.
- **Settings are kept.** ``store.json`` records how the traces were made (model, dtype,
  dataset, prompts, generation and lens settings) and every trace carries the digest of
  those settings. A rerun with other settings is refused (unless ``overwrite``, which
  re-traces every item whose digest differs, and can itself be resumed).
- **Settings are checked trace by trace.** Without ``store.json`` (deleted, or a store of an
  older kit) the digests the traces carry still refuse a rerun with other settings; a file
  named like an item that is not a trace of the kit is never overwritten; and
  :func:`evaluate_store` refuses a store whose traces were made with different settings
  (a killed ``--overwrite``).
- **Concurrent runs share the work and the cores.** Before tracing an item a run locks it
  with a ``.<id>.lock`` file that it refreshes while it works (a heartbeat); other runs
  skip items locked by a live process. A lock whose process is gone (or whose pid now
  names another process), or whose heartbeat is older than :data:`STALE_AFTER` seconds
  (another host), is taken over. Runs on one machine register in ``.run.<pid>.json`` and
  split its cores between them (``torch.set_num_threads``), as ``accelerate launch`` does.
- **A bad item does not block the rest** with ``keep_going``: its error is recorded in
  ``<id>.error.json`` (removed once the item succeeds), the run goes on and reports the
  failures at the end.
- **Traces know their source.** Each records its image's SHA-256; :func:`evaluate_store`
  refuses to score traces against a dataset whose images differ.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .data import Item, read_amber
from .files import check_writable, write_json
from .hallucination import score_discriminative, score_generative
from .loading import LoadedModel
from .tracing import Trace, TraceFileError, trace

SETTINGS_FILE = "store.json"
#: A lock whose heartbeat is older than this (seconds) is stale, whoever wrote it.
STALE_AFTER = 600.0
#: How often (seconds) a run refreshes the lock of the item it is tracing.
HEARTBEAT = 30.0


class StoreError(ValueError):
    """A store that cannot be used as asked (other settings, another dataset, read-only)."""


def store_settings(
    model: str,
    model_dtype: str | None,
    items: Sequence[Item],
    source: str,
    max_new_tokens: int,
    **trace_kwargs: Any,
) -> dict[str, Any]:
    """Everything a store's traces depend on, as recorded in ``store.json``.

    ``model_dtype`` None leaves it out: the settings known before the model is loaded,
    which :func:`check_settings` can compare early.
    """
    dtype = {} if model_dtype is None else {"model_dtype": model_dtype}
    return {
        "model": model,
        **dtype,
        "source": source,
        "prompts": sorted({it.prompt for it in items}),
        "max_new_tokens": max_new_tokens,
        **{k: trace_kwargs[k] for k in sorted(trace_kwargs)},
    }


def digest(settings: dict[str, Any]) -> str:
    """Short stable hash of a settings dict."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_settings(
    out: str | Path, settings: dict[str, Any], overwrite: bool, record: bool = True
) -> None:
    """Refuse a store made with other settings unless ``overwrite``; record the settings.

    Args:
        out: the store folder.
        settings: from :func:`store_settings`; only its keys are compared.
        overwrite: accept other settings (their traces will be re-made).
        record: write ``settings`` to ``store.json``.

    Raises:
        StoreError: ``store.json`` differs and ``overwrite`` is False (the differences named).
    """
    path = Path(out) / SETTINGS_FILE
    new = json.loads(json.dumps(settings, default=str))
    if path.is_file() and not overwrite:
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = {}
        if any(old.get(k) != v for k, v in new.items()):
            keys = sorted(k for k in new if old.get(k) != new.get(k))
            changes = "; ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in keys)
            raise StoreError(
                f"'{out}' holds traces made with other settings ({changes}). Use another --out "
                "folder, or pass --overwrite (overwrite=True) to re-trace them."
            )
    if record:
        write_json(path, new)


def _start_time(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from /proc), if known."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _owner() -> dict[str, Any]:
    """What a lock or run file says about this process."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "start": _start_time(os.getpid())}


def _alive(lock: Path) -> bool:
    """Whether the process that wrote ``lock`` (a lock or run file) still holds it.

    Stale, whoever wrote it: a heartbeat (modification time) older than
    :data:`STALE_AFTER`. On this host: a process that is gone, or a pid that now names
    another process (its start time differs from the one recorded). From another host, a
    fresh heartbeat counts as alive. An unreadable file younger than a few seconds counts as
    alive (its writer may not have finished).
    """
    try:
        age = time.time() - lock.stat().st_mtime
    except OSError:
        return False
    if age > STALE_AFTER:
        return False
    try:
        owner = json.loads(lock.read_text())
        pid, host = int(owner["pid"]), owner["host"]
    except (OSError, ValueError, KeyError, TypeError):
        return age < 10
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return owner.get("start") is not None and owner.get("start") == _start_time(pid)


class _Heartbeat:
    """Refreshes files' modification times every :data:`HEARTBEAT` seconds while open."""

    def __init__(self, *paths: Path) -> None:
        self.paths, self.stop = paths, threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT):
            for path in self.paths:
                try:
                    os.utime(path)
                except OSError:
                    pass

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def _lock(out: Path, item_id: str) -> Path | None:
    """Lock an item for this process; None when a live process holds it."""
    lock = out / f".{item_id}.lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            if _alive(lock):
                return None
            lock.unlink(missing_ok=True)  # left by a dead or stale process
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(_owner(), f)
        for stale in out.glob(f".{item_id}.safetensors.*.tmp"):  # a dead writer's temp file
            stale.unlink(missing_ok=True)
        return lock
    return None


def _share_cores(out: Path, run_file: Path, threads: int) -> int:
    """Threads for this run: at most ``threads``, the cores split among this host's live runs."""
    host = socket.gethostname()
    live = 0
    for f in out.glob(".run.*.json"):
        try:
            ours = json.loads(f.read_text()).get("host") == host
        except (OSError, ValueError, AttributeError):
            continue
        live += ours and (f == run_file or _alive(f))
    return max(1, min(threads, (os.cpu_count() or 1) // max(live, 1)))


def _check_existing(out: Path, ids: set[str], key: str, overwrite: bool) -> None:
    """Refuse to overwrite what is not ours, or traces of other settings without ``overwrite``.

    Raises:
        StoreError: a file named like an item is not a trace of the kit, or (without
            ``overwrite``) traces carry another settings digest than ``key``.
    """
    foreign, other = [], []
    for path in sorted(out.glob("*.safetensors")):
        try:
            found = Trace.read_meta(path).get("settings_digest")
        except TraceFileError:
            found = None
        if found is None:
            if path.stem in ids:
                foreign.append(path.name)
        elif found != key:
            other.append(path.name)
    if foreign:
        raise StoreError(
            f"'{out}' holds {foreign[:3]} (named like items to trace) that are not traces of "
            "this kit; it never overwrites them. Move them out, or use another --out folder."
        )
    if other and not overwrite:
        raise StoreError(
            f"'{out}' holds {len(other)} traces made with other settings (first: {other[:3]}; "
            f"store.json missing or from an older kit). Use another --out folder, or pass "
            "--overwrite (overwrite=True) to re-trace them."
        )


def _done(path: Path, settings_digest: str) -> bool:
    if not path.is_file():
        return False
    try:
        return Trace.read_meta(path).get("settings_digest") == settings_digest
    except TraceFileError:
        return False


@dataclass
class StoreRun:
    """What one :func:`trace_dataset` call did."""

    written: list[Path] = field(default_factory=list)  # traces written by this call
    done: int = 0  # items already finished with the same settings
    elsewhere: list[str] = field(default_factory=list)  # items locked by another live run
    failed: dict[str, str] = field(default_factory=dict)  # item id -> error (keep_going)

    def summary(self) -> str:
        """One line per outcome."""
        lines = [f"wrote {len(self.written)} traces; {self.done} already done"]
        if self.elsewhere:
            lines.append(f"{len(self.elsewhere)} in progress in another run: {self.elsewhere[:5]}")
        if self.failed:
            shown = "; ".join(f"{k}: {v}" for k, v in list(self.failed.items())[:5])
            lines.append(f"{len(self.failed)} FAILED (see <id>.error.json): {shown}")
        return "\n".join(lines)


def trace_dataset(
    loaded: LoadedModel,
    items: Sequence[Item],
    out: str | Path,
    max_new_tokens: int = 64,
    *,
    source: str = "",
    overwrite: bool = False,
    keep_going: bool = False,
    process_index: int = 0,
    num_processes: int = 1,
    progress: bool = True,
    **trace_kwargs: Any,
) -> StoreRun:
    """Trace this process's share of ``items`` into the store ``out`` (see the module docs).

    Args:
        loaded: the model.
        items: everything to trace (each process takes every ``num_processes``-th item).
        out: the store folder.
        max_new_tokens: generation limit.
        source: the dataset's location, recorded in the settings.
        overwrite: re-trace items made with other settings instead of refusing.
        keep_going: record an item's error and go on (else the first error is raised).
        process_index: this process's rank.
        num_processes: how many processes share the items.
        progress: show a progress bar.
        **trace_kwargs: forwarded to :func:`~lvlm_kit.tracing.trace` (JSON-able values).

    Returns:
        A :class:`StoreRun`.

    Raises:
        StoreError: the store holds traces made with other settings (and not ``overwrite``).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = store_settings(
        loaded.name, loaded.precision, items, source, max_new_tokens, **trace_kwargs
    )
    check_settings(out, settings, overwrite, record=False)
    key = digest(settings)
    _check_existing(out, {it.id for it in items}, key, overwrite)
    recorded = False
    for tmp in out.glob(".*.safetensors.*.tmp"):  # temp files of dead writers only
        item_id = tmp.name[1:].split(".safetensors.")[0]
        lock = out / f".{item_id}.lock"
        if not (lock.exists() and _alive(lock)):
            tmp.unlink(missing_ok=True)
    run = StoreRun()
    mine = list(items)[process_index::num_processes]
    bar = tqdm(mine, desc=f"trace [{process_index}]", position=process_index, disable=not progress)
    for old in out.glob(".run.*.json"):  # left by killed runs
        if not _alive(old):
            old.unlink(missing_ok=True)
    run_file = out / f".run.{os.getpid()}.json"
    write_json(run_file, _owner())
    threads = torch.get_num_threads()
    try:
        for item in bar:
            recorded = _trace_item(
                loaded,
                item,
                out,
                max_new_tokens,
                key,
                settings,
                overwrite,
                keep_going,
                run,
                run_file,
                threads,
                recorded,
                trace_kwargs,
            )
    finally:
        run_file.unlink(missing_ok=True)
        torch.set_num_threads(threads)
    return run


def _trace_item(
    loaded: LoadedModel,
    item: Item,
    out: Path,
    max_new_tokens: int,
    key: str,
    settings: dict[str, Any],
    overwrite: bool,
    keep_going: bool,
    run: StoreRun,
    run_file: Path,
    threads: int,
    recorded: bool,
    trace_kwargs: dict[str, Any],
) -> bool:
    """Trace one item into the store (see :func:`trace_dataset`).

    Returns:
        Whether ``store.json`` has been written (by this call or an earlier one).
    """
    path, error = out / f"{item.id}.safetensors", out / f"{item.id}.error.json"
    if _done(path, key):
        run.done += 1
        return recorded
    lock = _lock(out, item.id)
    if lock is None:
        run.elsewhere.append(item.id)
        return recorded
    try:
        os.utime(run_file)
        torch.set_num_threads(_share_cores(out, run_file, threads))
        with _Heartbeat(lock, run_file):
            tr = trace(loaded, item.image, item.prompt, max_new_tokens, **trace_kwargs)
        tr.meta.update(
            item_id=item.id,
            image=str(item.image),
            image_sha256=file_sha256(item.image),
            settings_digest=key,
        )
        if not recorded:  # only once a trace was made: a run that fails at once leaves none
            check_settings(out, settings, overwrite)
            recorded = True
        run.written.append(tr.save(path))
        error.unlink(missing_ok=True)
    except Exception as exc:
        if not keep_going:
            raise
        message = f"{exc.__class__.__name__}: {exc}"
        run.failed[item.id] = message
        write_json(error, {"id": item.id, "image": str(item.image), "error": message})
    finally:
        lock.unlink(missing_ok=True)
    return recorded


def evaluate_store(store: str | Path, data: str | Path, queries: str = "generative") -> dict:
    """Score a trace store's generated texts against AMBER annotations.

    Every trace must come from the same image as the dataset's item of the same id (its
    recorded SHA-256 is checked). The store must be writable: the scores are saved there.

    Returns:
        Generative metrics (CHAIR, Cover, Hal, Cog) or discriminative ones, with counts.

    Raises:
        FileNotFoundError: no traces in ``store``.
        StoreError: a read-only store, or traces of other images than ``data``'s.
        ValueError: no trace matches a query of ``data``.
    """
    store = Path(store)
    paths = sorted(store.glob("*.safetensors"))
    if not paths:
        raise FileNotFoundError(f"no traces in '{store}'; run `lvlm-kit trace` first.")
    try:
        check_writable(store)
    except OSError as exc:
        raise StoreError(
            f"'{store}' cannot be written ({exc.strerror or exc}); the scores are saved there. "
            "Make it writable, or copy the store somewhere writable."
        ) from None
    amber = read_amber(data, queries)
    by_id = {str(q["id"]): q for q in amber.queries}
    traces = {p.stem: Trace.load(p) for p in paths if p.stem in by_id}
    if not traces:
        raise ValueError(f"no trace in '{store}' matches a {queries} query of '{data}'.")
    other = [
        i
        for i, tr in traces.items()
        if tr.meta.get("image_sha256") != file_sha256(amber.image_path(by_id[i]))
    ]
    if other:
        raise StoreError(
            f"{len(other)} traces in '{store}' were made from other images than '{data}' holds "
            f"for the same ids (first: {other[:5]}); score the store against the dataset it "
            "was traced from."
        )
    digests = {}
    for i, tr in traces.items():
        digests.setdefault(tr.meta.get("settings_digest"), []).append(i)
    if len(digests) > 1:
        counts = ", ".join(f"{len(ids)} with settings {d}" for d, ids in digests.items())
        raise StoreError(
            f"'{store}' holds traces made with different settings ({counts}): a run with "
            "--overwrite did not finish. Run the same `lvlm-kit trace ... --overwrite` again to "
            "complete it, then evaluate."
        )
    responses = [{"id": int(i), "response": tr.generated_text} for i, tr in traces.items()]
    if queries == "generative":
        scores = score_generative(responses, amber).as_dict()
    else:
        scores = score_discriminative(responses, amber)
    scores["n_missing"] = len(by_id) - len(responses)
    return scores
