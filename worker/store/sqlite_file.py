"""One SQLite file in WAL mode, shared by the threads of a process and by processes: the common
ground of the ``list`` index and the Merkle log's file.

Writes go through one connection in ``BEGIN IMMEDIATE`` transactions (a lock between threads;
SQLite's own lock between processes); reads through a read-only connection of their own, so a
WAL reader never waits for a write, and a slow query never holds up a commit. Where the store
flushes with ``syncfs`` after its transactions, SQLite need not fsync (``synchronous=NORMAL``);
elsewhere it does (``FULL``).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class SqliteFile:
    """The connections of one file; subclasses give it its schema in ``open``."""

    def __init__(self, path: Path, *, flushed_by_caller: bool = False) -> None:
        self.path = path
        self._synchronous = "NORMAL" if flushed_by_caller else "FULL"
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self._reader: sqlite3.Connection | None = None

    def _open_writer(self) -> None:
        self._db = self._connect()
        to_wal(self._db)
        self._db.execute(f"PRAGMA synchronous={self._synchronous}")

    def open_read_only(self) -> None:
        """Only the reading connection: for another process that only reads (an audit's)."""
        self._open_reader()

    def _open_reader(self) -> None:
        self._reader = self._connect()
        self._reader.execute("PRAGMA query_only=ON")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA busy_timeout=10000")
        return db

    def close(self) -> None:
        for db in (self._reader, self._db):
            if db is not None:
                db.close()
        self._db = self._reader = None

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        assert self._db is not None, f"open() {self.path.name} first"
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        assert self._reader is not None, f"open() {self.path.name} first"
        with self._read_lock:
            yield self._reader


def select_in(
    db: sqlite3.Connection, query: str, ids: Sequence[str], after: str = "", chunk: int = 500
) -> Iterator[Any]:
    """The rows of ``query`` (which ends in ``IN``) for ``ids``, then ``after`` (an ORDER BY),
    a few hundred ids a statement: SQLite limits a statement's parameters."""
    for start in range(0, len(ids), chunk):
        part = ids[start : start + chunk]
        yield from db.execute(f"{query} ({', '.join('?' * len(part))}) {after}", part)


def to_wal(db: sqlite3.Connection, attempts: int = 100) -> None:
    """``PRAGMA journal_mode=WAL``, retried: when several processes open a new file at once,
    SQLite may answer "database is locked" without waiting out ``busy_timeout``."""
    for attempt in range(attempts):
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.05)
