"""The files store's ``log.sqlite``: the Merkle log, and where each run's current bytes are.

Beside the log's tables (``merkle_log``) two more:

    places    run_id -> (segment, offset, length) of the run's current revision (``segments``)
    segments  one row a segment file ever started: ids unique across processes

A run exists when it has a place. Its place and its leaf are written in one transaction, so no
stored revision lacks its leaf and no leaf names a revision that was never stored; and creating
a run is "insert its place unless it has one", decided inside that transaction, so that of two
processes creating one run id exactly one does (the other reads the winner's bytes).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from worker.core.timefmt import utc_now, utc_text
from worker.store.merkle_log import MerkleLog
from worker.store.segments import Place
from worker.store.sqlite_file import select_in

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS places (run_id TEXT PRIMARY KEY, segment INTEGER NOT NULL, "
    "offset INTEGER NOT NULL, length INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS segments (id INTEGER PRIMARY KEY, started_at TEXT NOT NULL)",
]


class RunLog(MerkleLog):
    """One ``log.sqlite`` of a files store; as ``MerkleLog``, shared by threads and processes.

    ``place_on_loop`` reads through a connection of its own, meant for the event loop's thread:
    a point look-up there never waits for the lock of a thread's long read (an audit's).
    """

    _cleared = (*MerkleLog._cleared, "places")
    _point: sqlite3.Connection | None = None
    _point_lock: threading.Lock  # uncontended on one loop; safe should two loops share it

    def open(self) -> None:
        super().open()
        with self._transaction() as db:
            for statement in _SCHEMA:
                db.execute(statement)
        self._point = self._connect()
        self._point.execute("PRAGMA query_only=ON")
        self._point_lock = threading.Lock()

    def open_read_only(self) -> None:
        super().open_read_only()
        self._point = self._connect()
        self._point_lock = threading.Lock()

    def close(self) -> None:
        if self._point is not None:
            self._point.close()
            self._point = None
        super().close()

    # -- writes ----------------------------------------------------------------------------

    def new_segment(self) -> int:
        """A segment id no process has had."""
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO segments (started_at) VALUES (?)", (utc_text(utc_now()),)
            )
            assert cursor.lastrowid is not None
            return cursor.lastrowid

    def create(
        self, records: Sequence[dict[str, Any]], places: Sequence[Place]
    ) -> list[Place | None]:
        """Create each run that has no place: its place and its leaf (``records[i]`` at
        ``places[i]``), in one transaction. Returns None for each run created, the place it
        already had for the others."""
        with self._transaction() as db:
            found = _places(db, [r["run_id"] for r in records])
            fresh = [
                (r, p) for r, p in zip(records, places, strict=True) if r["run_id"] not in found
            ]
            db.executemany(
                "INSERT INTO places (run_id, segment, offset, length) VALUES (?, ?, ?, ?)",
                [(r["run_id"], *place) for r, place in fresh],
            )
            self._append_in(db, [r for r, _ in fresh])
        return [found.get(r["run_id"]) for r in records]

    def revise(self, record: dict[str, Any], place: Place) -> None:
        """Move a run to its new revision: the revision's leaf and its place, together."""
        with self._transaction() as db:
            self._append_in(db, [record])
            db.execute(
                "UPDATE places SET segment = ?, offset = ?, length = ? WHERE run_id = ?",
                (*place, record["run_id"]),
            )

    def adopt_places(self, placed: Iterable[tuple[str, Place]]) -> None:
        """Place runs that have no place yet (the files of an older layout moved into
        segments); a run placed already keeps its place."""
        with self._transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO places (run_id, segment, offset, length) "
                "VALUES (?, ?, ?, ?)",
                [(run_id, *place) for run_id, place in placed],
            )

    # -- reads -----------------------------------------------------------------------------

    def place_of(self, run_id: str) -> Place | None:
        with self._reading() as db:
            return _place(db, run_id)

    def place_on_loop(self, run_id: str) -> Place | None:
        """``place_of`` for the event loop's thread (see the class docstring)."""
        assert self._point is not None, "open() log.sqlite first"
        with self._point_lock:
            return _place(self._point, run_id)

    def places_of(self, run_ids: Sequence[str]) -> dict[str, Place]:
        with self._reading() as db:
            return _places(db, run_ids)

    def placed_after(self, run_id: str, limit: int) -> list[tuple[str, Place]]:
        """Up to ``limit`` runs and their places, by run id, after ``run_id`` ("" from the
        first): a full pass a chunk at a time, never holding a read open between chunks."""
        with self._reading() as db:
            rows = db.execute(
                "SELECT run_id, segment, offset, length FROM places WHERE run_id > ? "
                "ORDER BY run_id LIMIT ?",
                (run_id, limit),
            ).fetchall()
        return [(row[0], Place(*row[1:])) for row in rows]

    def count_placed(self) -> int:
        with self._reading() as db:
            (count,) = db.execute("SELECT count(*) FROM places").fetchone()
        return int(count)


def _place(db: sqlite3.Connection, run_id: str) -> Place | None:
    row = db.execute(
        "SELECT segment, offset, length FROM places WHERE run_id = ?", (run_id,)
    ).fetchone()
    return None if row is None else Place(*row)


def _places(db: sqlite3.Connection, run_ids: Sequence[str]) -> dict[str, Place]:
    rows = select_in(
        db, "SELECT run_id, segment, offset, length FROM places WHERE run_id IN", run_ids
    )
    return {row[0]: Place(*row[1:]) for row in rows}
