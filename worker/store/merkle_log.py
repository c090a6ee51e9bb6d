"""The Merkle log's leaves and subtree hashes in one SQLite file (``log.sqlite``).

With the files store this file *is* the log (``run_log`` adds where each run's bytes are): a
run's leaf is appended in the same transaction as its place, in the group commit. With the
JetStream store it is this host's copy of the log stream, applied in stream order with the
stream sequence it reached. Either way proofs, roots and leaf look-ups are answered from here:
``leaves`` holds each record (``idx`` = its position in the tree), ``nodes`` every perfect
subtree's hash (``contracts.merkle``), so a root or a proof reads O(log² n) rows.

Several processes may share the file: an append is one ``BEGIN IMMEDIATE`` transaction that
reads the tree's size and frontier inside it, so two writers never fork the tree.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

from contracts import merkle
from contracts.transparency import record_bytes
from worker.store.base import Leaf
from worker.store.sqlite_file import SqliteFile, select_in

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS leaves (idx INTEGER PRIMARY KEY, run_id TEXT NOT NULL, "
    "revision INTEGER NOT NULL, record BLOB NOT NULL)",
    "CREATE UNIQUE INDEX IF NOT EXISTS leaves_run ON leaves (run_id, revision)",
    "CREATE TABLE IF NOT EXISTS nodes (level INTEGER NOT NULL, idx INTEGER NOT NULL, "
    "hash BLOB NOT NULL, PRIMARY KEY (level, idx)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
]


class LogOutOfOrderError(Exception):
    """A leaf applied at a position other than the tree's next one (a copy that lost its place)."""


class MerkleLog(SqliteFile):
    """One ``log.sqlite``; safe to share between threads of a process and between processes."""

    _cleared: tuple[str, ...] = ("leaves", "nodes", "state")  # what ``clear`` empties

    def open(self) -> None:
        self._open_writer()
        with self._transaction() as db:
            for statement in _SCHEMA:
                db.execute(statement)
        self._open_reader()

    # -- writes ----------------------------------------------------------------------------

    def append(self, records: Sequence[dict[str, Any]]) -> list[int]:
        """Append each record whose (run id, revision) has no leaf yet, in one transaction;
        returns every record's position (the existing leaf's for those already logged)."""
        with self._transaction() as db:
            return self._append_in(db, records)

    def _append_in(self, db: sqlite3.Connection, records: Sequence[dict[str, Any]]) -> list[int]:
        """``append``'s work, inside a write transaction of the caller's."""
        if not records:
            return []
        logged = _positions(db, {r["run_id"] for r in records})
        positions = [logged.get((r["run_id"], r["revision"])) for r in records]
        size = _size(db)
        fresh = [r for r, at in zip(records, positions, strict=True) if at is None]
        keys = {(r["run_id"], r["revision"]) for r in fresh}
        if len(keys) != len(fresh):
            raise ValueError("two records for one revision in one append")
        _insert(db, size, fresh)
        it = iter(range(size, size + len(fresh)))
        return [at if at is not None else next(it) for at in positions]

    def apply(self, first: int, records: Sequence[dict[str, Any]], state: dict[str, str]) -> None:
        """Append ``records`` at positions ``first``.. and record ``state`` in one transaction
        (a copy of a log kept elsewhere: every leaf goes exactly where the original has it)."""
        with self._transaction() as db:
            size = _size(db)
            if size != first:
                raise LogOutOfOrderError(f"leaf {first} applied to a log of {size}")
            _insert(db, size, records)
            db.executemany("INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)", state.items())

    def clear(self, state: dict[str, str]) -> None:
        """Empty the copy and replace its state (a log stream that was recreated)."""
        with self._transaction() as db:
            for table in self._cleared:
                db.execute(f"DELETE FROM {table}")
            db.executemany("INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)", state.items())

    # -- reads -----------------------------------------------------------------------------

    def has(self, run_id: str, revision: int) -> bool:
        with self._reading() as db:
            return _position(db, run_id, revision) is not None

    def state(self) -> dict[str, str]:
        with self._reading() as db:
            return dict(db.execute("SELECT key, value FROM state").fetchall())

    def size(self) -> int:
        with self._reading() as db:
            return _size(db)

    def head(self) -> tuple[int, bytes]:
        """(size, root) read together."""
        with self._reading() as db:
            db.execute("BEGIN")
            try:
                size = _size(db)
                return size, merkle.root(size, _node_reader(db))
            finally:
                db.execute("COMMIT")

    def root(self, size: int) -> bytes:
        self._check(size)
        with self._reading() as db:
            return merkle.root(size, _node_reader(db))

    def inclusion(self, index: int, size: int) -> list[bytes]:
        self._check(size)
        with self._reading() as db:
            return merkle.inclusion_proof(index, size, _node_reader(db))

    def consistency(self, old: int, new: int) -> list[bytes]:
        self._check(new)
        with self._reading() as db:
            return merkle.consistency_proof(old, new, _node_reader(db))

    def _check(self, size: int) -> None:
        if size > self.size():
            raise ValueError(f"the log has fewer than {size} leaves")

    def leaves_of(self, run_id: str) -> list[Leaf]:
        """Every leaf of a run, by revision."""
        with self._reading() as db:
            rows = db.execute(
                "SELECT idx, record FROM leaves WHERE run_id = ? ORDER BY revision", (run_id,)
            ).fetchall()
        return [Leaf(idx, json.loads(record)) for idx, record in rows]

    def logged_of(self, run_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
        """For an audit: each run's leaves by revision, only ``revision``, ``artifact_sha256``
        and ``entry_sha256`` (read by SQLite from the records: no JSON parsed here)."""
        found: dict[str, list[dict[str, Any]]] = {run_id: [] for run_id in run_ids}
        query = (
            "SELECT run_id, revision, json_extract(record, '$.artifact_sha256'), "
            "json_extract(record, '$.entry_sha256') FROM leaves WHERE run_id IN"
        )
        with self._reading() as db:
            rows = select_in(db, query, list(run_ids), "ORDER BY run_id, revision")
            for run_id, revision, artifact_sha256, entry_sha256 in rows:
                found[run_id].append(
                    {
                        "revision": revision,
                        "artifact_sha256": artifact_sha256,
                        "entry_sha256": entry_sha256,
                    }
                )
        return found

    def leaves(self, start: int, end: int) -> list[Leaf]:
        """The leaves at positions ``start`` to ``end`` (exclusive)."""
        with self._reading() as db:
            rows = db.execute(
                "SELECT idx, record FROM leaves WHERE idx >= ? AND idx < ? ORDER BY idx",
                (start, end),
            ).fetchall()
        return [Leaf(idx, json.loads(record)) for idx, record in rows]

    def scan(self, chunk: int = 4096) -> Iterator[tuple[int, bytes]]:
        """Every (position, record bytes) in order, read in chunks (an audit's full pass)."""
        start = 0
        while True:
            with self._reading() as db:
                rows = db.execute(
                    "SELECT idx, record FROM leaves WHERE idx >= ? ORDER BY idx LIMIT ?",
                    (start, chunk),
                ).fetchall()
            yield from rows
            if len(rows) < chunk:
                return
            start = rows[-1][0] + 1


def _size(db: sqlite3.Connection) -> int:
    (top,) = db.execute("SELECT max(idx) FROM leaves").fetchone()
    return 0 if top is None else int(top) + 1


def _position(db: sqlite3.Connection, run_id: str, revision: int) -> int | None:
    row = db.execute(
        "SELECT idx FROM leaves WHERE run_id = ? AND revision = ?", (run_id, revision)
    ).fetchone()
    return None if row is None else int(row[0])


def _positions(db: sqlite3.Connection, run_ids: set[str]) -> dict[tuple[str, int], int]:
    """(run id, revision) -> position of every leaf of these runs, a few queries a batch."""
    query = "SELECT run_id, revision, idx FROM leaves WHERE run_id IN"
    rows = select_in(db, query, sorted(run_ids))
    return {(run_id, revision): idx for run_id, revision, idx in rows}


def _node_reader(db: sqlite3.Connection) -> merkle.NodeAt:
    def node(level: int, index: int) -> bytes:
        row = db.execute(
            "SELECT hash FROM nodes WHERE level = ? AND idx = ?", (level, index)
        ).fetchone()
        if row is None:
            raise LookupError(f"the log lacks node ({level}, {index})")
        return bytes(row[0])

    return node


def _insert(db: sqlite3.Connection, size: int, records: Sequence[dict[str, Any]]) -> None:
    encoded = [record_bytes(r) for r in records]
    nodes = merkle.appended(size, [merkle.leaf_hash(e) for e in encoded], _node_reader(db))
    db.executemany(
        "INSERT INTO leaves (idx, run_id, revision, record) VALUES (?, ?, ?, ?)",
        [
            (size + i, r["run_id"], r["revision"], e)
            for i, (r, e) in enumerate(zip(records, encoded, strict=True))
        ],
    )
    db.executemany(
        "INSERT INTO nodes (level, idx, hash) VALUES (?, ?, ?)",
        [(level, index, h) for (level, index), h in nodes.items()],
    )
