"""Append-only segment files: the bytes of every run revision the files store writes.

    segments/<id>.jsonl    one canonical JSON document a line, appended by one process only

A process appends to a segment of its own (the id is allocated in ``log.sqlite``, so two
processes never share one) and starts a new one when the current one reaches ``limit`` bytes. A
batch of records is one ``pwrite``: no file is created, named, linked or removed per run (one
file a run cost ~60 µs of CPU a run and most of the kernel's share, see the README). Where a
run's current bytes are, its *place* (segment, offset, length), is kept in ``log.sqlite``
(``run_log``), written in the same transaction as the run's leaf. Bytes that no place names (a
commit that failed, lost a race or crashed before its transaction) are never read.

The bytes are written, and flushed, before the place that names them is committed: a place
never names bytes that are not durable, and a segment is never rewritten.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from worker.store.cached_read import open_cached, pread_cached

_READERS = 32  # segments whose descriptors ``read_cached`` keeps open


class Place(NamedTuple):
    """Where one record's bytes are: its segment, their offset and length in it."""

    segment: int
    offset: int
    length: int


class Segments:
    """The segment files under one directory, and this process's current segment."""

    def __init__(
        self,
        directory: Path,
        allocate: Callable[[], int],
        flush_dir: Callable[[Path], None],
        *,
        limit: int = 64 << 20,
    ) -> None:
        self.dir = directory
        self.limit = limit
        self._allocate = allocate  # a new segment id, unique across processes
        self._flush_dir = flush_dir  # makes a new segment's directory entry durable
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._segment = 0
        self._size = 0
        self._readers: dict[int, int] = {}  # segment -> descriptor, for ``read_cached``

    def path(self, segment: int) -> Path:
        return self.dir / f"{segment:08d}.jsonl"

    def append(self, records: Sequence[bytes]) -> list[Place]:
        """Write ``records`` at the end of this process's segment (not yet flushed), a line
        each; returns their places. A failed write leaves nothing a place names: the next one
        starts where it did."""
        with self._lock:
            if self._fd is None or self._size >= self.limit:
                self._start()
            assert self._fd is not None
            data = b"".join(record + b"\n" for record in records)
            view, at = memoryview(data), self._size
            while view:
                written = os.pwrite(self._fd, view, at)
                view, at = view[written:], at + written
            places, offset = [], self._size
            for record in records:
                places.append(Place(self._segment, offset, len(record)))
                offset += len(record) + 1
            self._size = offset
            return places

    def _start(self) -> None:
        segment = self._allocate()
        self.dir.mkdir(exist_ok=True)
        fd = os.open(self.path(segment), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            self._flush_dir(self.dir)
        except BaseException:
            os.close(fd)
            raise
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._segment, self._size = fd, segment, 0

    def read(self, place: Place) -> bytes:
        """The bytes at ``place`` (blocking); see ``read_many``."""
        [data] = self.read_many([place])
        return data

    def read_many(self, places: Sequence[Place]) -> list[bytes]:
        """The bytes at each place (blocking), each segment opened once, read in file order.
        Fewer than a place's length, or none, when its segment was cut short or removed behind
        the store's back: the caller's parse (or the audit) says the run is damaged."""
        found: dict[Place, bytes] = {}
        fds: dict[int, int | None] = {}
        try:
            for place in sorted(places):
                if place.segment not in fds:
                    fds[place.segment] = _open(self.path(place.segment))
                fd = fds[place.segment]
                found[place] = b"" if fd is None else os.pread(fd, place.length, place.offset)
        finally:
            for fd in fds.values():
                if fd is not None:
                    os.close(fd)
        return [found[place] for place in places]

    def read_cached(self, place: Place) -> bytes | None:
        """The bytes at ``place`` when the kernel's caches hold them, else None (``cached_read``):
        for the event loop's thread only, which never waits on a disk. The descriptors of the
        segments read last stay open (a segment is never rewritten): an open cost more than
        the read."""
        fd = self._readers.pop(place.segment, None)
        if fd is None:
            fd = open_cached(str(self.path(place.segment)))
            if fd is None:
                return None  # not cached, or gone: the thread's read says which
        self._readers[place.segment] = fd  # the newest last
        if len(self._readers) > _READERS:
            os.close(self._readers.pop(next(iter(self._readers))))
        return pread_cached(fd, place.offset, place.length)

    def close(self) -> None:
        """Close this process's segment (a new one is started at the next append) and the
        loop's descriptors."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        while self._readers:
            os.close(self._readers.popitem()[1])


def _open(path: Path) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
