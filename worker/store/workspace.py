"""The data directory's scratch space: temp files of one live process, and their flushing.

A durable file that is not appended to (a blob, its metadata) is written as a temp file under
``tmp/<process>/``, flushed, then linked into place. Temp files live apart from the blobs (on the
same file system, so that a link works) so that the leftovers of a crash are found without
listing the store. Each process holds
an ``flock`` on its own temp dir: start-up removes only the dirs whose owner is gone, so several
workers may share one data dir.

An *intent* is a temp file naming the runs of a commit in progress, flushed with the commit's
first flush and removed once the commit (index included) is done. The intents of a process that
died say which runs may be on disk but missing from the index.

A commit writes its temp files and intent through a :meth:`Workspace.scratch`: when it ends,
finished or failed, they are removed, so a live process leaves nothing behind however often
its writes fail (a full disk, say); only a crash leaves them, for the next start to sweep.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from worker.store.durable import SYNCFS_AVAILABLE, Flusher


class Workspace:
    """Temp files and flushes for everything stored under one data directory."""

    def __init__(self, root: Path, *, use_syncfs: bool = True) -> None:
        self.root = root
        self.tmp_root = root / "tmp"
        self._use_syncfs = use_syncfs
        self._dir: Path | None = None
        self._lock_fd: int | None = None
        self._flusher: Flusher | None = None
        self._names = itertools.count()

    def open(self, dirs: Iterable[Path]) -> list[str]:
        """Create ``dirs``, sweep leftovers, take a temp dir of our own. Blocking.

        Returns the names in the intents of dead processes: commits that may be unfinished.
        """
        created = [self.root, self.tmp_root, *dirs]
        for path in created:
            path.mkdir(parents=True, exist_ok=True)
        # Sweeping and taking a temp dir exclude each other across processes: a dir is never
        # seen between its mkdir and its lock (it would look abandoned and be swept).
        sweep_fd = os.open(self.tmp_root / ".sweep.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(sweep_fd, fcntl.LOCK_EX)
            unfinished = self.sweep_leftovers()
            self._dir = self.tmp_root / uuid.uuid4().hex
            self._dir.mkdir()
            self._lock_fd = os.open(self._dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        finally:
            os.close(sweep_fd)  # releases the flock
        self._flusher = Flusher(self.root, use_syncfs=self._use_syncfs)
        self._flusher.flush(dirs={p.parent for p in created} | set(created))
        return unfinished

    def sweep_leftovers(self) -> list[str]:
        """Remove the temp dirs of processes that are gone (their lock is free); the caller
        holds ``tmp/.sweep.lock``.

        Returns the names listed in their intents, read before the dirs are removed.
        """
        unfinished: list[str] = []
        for child in sorted(self.tmp_root.iterdir()):
            if not child.is_dir() or child == self._dir or _owner_alive(child):
                continue
            for intent in child.glob("*.intent"):
                unfinished += intent.read_text().split()
            shutil.rmtree(child, ignore_errors=True)
        return unfinished

    @contextmanager
    def scratch(self) -> Iterator[Scratch]:
        """Temp files and intents for one write, all removed when the block ends."""
        assert self._dir is not None, "open() the store first"
        scratch = Scratch(self._dir, self._names)
        try:
            yield scratch
        finally:
            for path in scratch.made:
                path.unlink(missing_ok=True)

    @property
    def batched(self) -> bool:
        """Whether a flush covers every file of the file system (``syncfs``)."""
        return self._use_syncfs and SYNCFS_AVAILABLE

    def flush(self, files: Iterable[Path] = (), dirs: Iterable[Path] = ()) -> None:
        assert self._flusher is not None, "open() the store first"
        self._flusher.flush(files, dirs)

    def close(self) -> None:
        if self._flusher is not None:
            self._flusher.close()
            self._flusher = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


class Scratch:
    """The temp files of one write (see :meth:`Workspace.scratch`)."""

    def __init__(self, directory: Path, names: Iterator[int]) -> None:
        self._dir = directory
        self._names = names
        self.made: list[Path] = []

    def intent(self, names: Iterable[str]) -> Path:
        """An intent listing ``names`` (not yet flushed: the commit's first flush does it)."""
        return self.temp("commit", "\n".join(names).encode(), suffix=".intent")

    def temp(self, stem: str, data: bytes, suffix: str = ".tmp") -> Path:
        """A new temp file holding ``data`` (not yet flushed)."""
        path = self._dir / f"{stem}.{next(self._names)}{suffix}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self.made.append(path)  # from here on, removed with the scratch, written or not
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        return path


def _owner_alive(temp_dir: Path) -> bool:
    try:
        fd = os.open(temp_dir / ".lock", os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
