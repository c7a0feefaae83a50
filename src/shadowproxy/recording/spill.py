"""Sealed files the store refuses, kept on local disk until it takes them again.

While the store is down (a bucket unreachable, a disk full), every sealed file would
otherwise wait in the writer's memory. With ``recording.spill_dir`` set, they wait on
local disk instead, up to ``recording.spill_max_bytes``, and survive the process::

    <spill_dir>/<host>-<pid>-<random>/.lock
    <spill_dir>/<host>-<pid>-<random>/<kind>/route=<r>/date=<d>/<name>.parquet

Each writer owns one subdirectory and holds an exclusive ``flock`` on its ``.lock`` for
as long as it lives (workers and restarts may share one ``spill_dir``). A writer that
starts adopts every subdirectory whose lock it can take: the owner is gone, and its
files are uploaded under their original names, so a file the owner had in fact
uploaded is overwritten with the same bytes, never duplicated.

A spilled file is written to a dot-name, fsynced and renamed, so a crash mid-spill
leaves no half file under a ``.parquet`` name.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from dataclasses import dataclass

import pyarrow.parquet as pq

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


@dataclass(frozen=True, slots=True)
class Spilled:
    """One file on the spill disk, waiting for the store."""

    directory: str
    """Relative to the recording root (``pairs/route=r/date=d``)."""
    name: str
    path: str
    size: int
    rows: int


class Spill:
    """The spill disk of one writer: its own files and those it adopted."""

    def __init__(self, root: str, max_bytes: int, prefix: str) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.used = 0
        """Bytes of spilled files not yet uploaded (own and adopted)."""
        self._own = os.path.join(root, prefix)
        self._locks: dict[str, int] = {}
        """Directory -> the fd holding its lock: our own, and those we adopted."""

    def open(self) -> list[Spilled]:
        """Create and lock our directory; adopt orphaned ones. Their files, oldest first."""
        os.makedirs(self._own, exist_ok=True)
        if not self._lock(self._own):
            raise OSError(f"{self._own} is locked by another process")
        adopted: list[Spilled] = []
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            if entry.is_dir() and entry.path != self._own and self._lock(entry.path):
                adopted.extend(self._files_of(entry.path))
        self.used += sum(spilled.size for spilled in adopted)
        return sorted(adopted, key=lambda s: (s.directory, s.name))

    def put(self, directory: str, name: str, data: memoryview, rows: int) -> Spilled | None:
        """Write one sealed file; None when it does not fit under ``max_bytes``.
        Raises ``OSError`` when the disk refuses (the file then stays in memory)."""
        size = len(data)
        if self.used + size > self.max_bytes:
            return None
        folder = os.path.join(self._own, directory)
        os.makedirs(folder, exist_ok=True)
        temporary = os.path.join(folder, f".{name}.tmp")
        final = os.path.join(folder, name)
        try:
            with open(temporary, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, final)
        except BaseException:
            _unlink(temporary)
            raise
        self.used += size
        return Spilled(directory, name, final, size, rows)

    def read(self, spilled: Spilled) -> bytes:
        with open(spilled.path, "rb") as handle:
            return handle.read()

    def remove(self, spilled: Spilled) -> None:
        """The store has the file: forget it here, and an adopted directory once empty."""
        _unlink(spilled.path)
        self.forget(spilled)

    def forget(self, spilled: Spilled) -> None:
        """The file is gone (uploaded or lost): stop counting it."""
        self.used -= spilled.size
        owner = _owner_of(self.root, spilled.path)
        if owner != self._own and owner in self._locks and not _has_files(owner):
            os.close(self._locks.pop(owner))
            shutil.rmtree(owner, ignore_errors=True)

    def close(self) -> None:
        """Release every lock; our directory goes when nothing is left in it."""
        for directory, fd in self._locks.items():
            if not _has_files(directory):
                shutil.rmtree(directory, ignore_errors=True)
            os.close(fd)
        self._locks.clear()

    def _lock(self, directory: str) -> bool:
        fd = os.open(os.path.join(directory, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._locks[directory] = fd
        return True

    def _files_of(self, owner: str) -> list[Spilled]:
        found = []
        for folder, _dirs, names in os.walk(owner):
            for name in names:
                if name.startswith(".") or not name.endswith(".parquet"):
                    continue
                path = os.path.join(folder, name)
                try:
                    rows = pq.read_metadata(path).num_rows
                except (OSError, ValueError) as exc:
                    log.error("recorder: spilled file %s is unreadable (%s); left there", path, exc)
                    continue
                directory = os.path.relpath(folder, owner).replace(os.sep, "/")
                found.append(Spilled(directory, name, path, os.path.getsize(path), rows))
        return found


def _owner_of(root: str, path: str) -> str:
    relative = os.path.relpath(path, root)
    return os.path.join(root, relative.split(os.sep, 1)[0])


def _has_files(directory: str) -> bool:
    return any(
        not name.startswith(".") for _folder, _dirs, names in os.walk(directory) for name in names
    )


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
