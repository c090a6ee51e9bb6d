"""The ``list`` index: a SQLite projection of the artifacts, rebuildable from them at any time.

The artifacts stay the source of truth. The index is written in the same group commit as the
runs (after their places, before anything is acked), and a commit that crashed in between is
repaired at start-up from its intent file (see ``workspace``): no query ever scans the store,
and no write rewrites the whole index. A row must be durable before the intent that would redo
it is dropped: SQLite runs in WAL mode, and where the store flushes with ``syncfs`` that flush
(after the index transaction) covers the WAL, so SQLite need not fsync (``synchronous=NORMAL``);
elsewhere it does (``FULL``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from worker.core.ingest import lookup
from worker.store.base import Query
from worker.store.sqlite_file import SqliteFile

# column -> where it comes from in the artifact
COLUMNS: dict[str, str] = {
    "run_id": "run_id",
    "created_at_utc": "created_at_utc",
    "status": "status",
    "event_type": "event_type",
    "mode": "mode",
    "tool_id": "tool_id",
    "source": "source",
    "risk_level": "decision.risk_level",
    "explanation_status": "explanation_status",
    "revision": "revision",
    "workflow_session_id": "workflow_session_id",
    "material_id": "material_id",
    "machine_id": "machine_id",
    "parent_run_id": "parent_run_id",
}
SUMMARY = (
    "run_id", "created_at_utc", "status", "event_type", "mode", "tool_id", "source",
    "risk_level", "explanation_status", "revision",
)  # fmt: skip
EQUALITY_FILTERS = tuple(c for c in COLUMNS if c not in {"run_id", "created_at_utc", "revision"})
# Every equality filter has its own (filter, newest-first) index: without one, a filter on a rare
# or absent value walks the whole table (measured: ~4 s at 1 M runs; bench/list_bench.py).
_INDEXED = EQUALITY_FILTERS
# 3: rows in a rowid table, appended in arrival order; a row's identity is its place in the
# newest-first order, (created_at_utc, run_id), unique: a run's creation time never changes, so
# ``INSERT OR REPLACE`` finds its row there. (2 kept run_id in a unique index of its own as
# well: run ids are hashes, so every insert wrote a page at a random place in it, which at 100 k
# runs was a third of the index's cost a run, 63 against 41 µs measured against a twin store in
# one process, README "Hot path, third step"; 1, a WITHOUT ROWID table keyed by run_id, was 30 %
# slower still.) Nothing looks a row up by its run id alone but the rare delete (a key removed
# from a jetstream store's bucket), which scans. An index of another version is rebuilt.
SCHEMA_VERSION = 3
_SCHEMA = [
    "CREATE TABLE runs ("
    + ", ".join(f"{c} {'INTEGER' if c == 'revision' else 'TEXT'}" for c in COLUMNS)
    + ")",
    "CREATE UNIQUE INDEX runs_newest ON runs (created_at_utc DESC, run_id DESC)",
    *(f"CREATE INDEX runs_{c} ON runs ({c}, created_at_utc DESC, run_id DESC)" for c in _INDEXED),
]

_CREATED = list(COLUMNS).index("created_at_utc")
_CHUNK = 500  # run ids a statement (SQLite's limit on parameters is far above)

# Where a projection fed from a stream stands (``projection``): one row per key, in the same
# transaction as the rows it applied.
_PROJECTION_STATE = (
    "CREATE TABLE IF NOT EXISTS projection (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
)


def row_of(artifact: dict[str, Any]) -> tuple[Any, ...]:
    """The row of an artifact; one without a creation time (none the worker makes) sorts last
    under ``""``, as SQLite's unique index would not tell two NULLs apart."""
    row = [lookup(artifact, path) for path in COLUMNS.values()]
    row[_CREATED] = row[_CREATED] or ""
    return tuple(row)


class RunIndex(SqliteFile):
    """One SQLite file; safe to share between threads of a process and between processes."""

    def open(self) -> bool:
        """Open (creating it when absent); True when the index is new and empty, or was of
        another schema version and has been emptied: the caller rebuilds it."""
        self._open_writer()
        with self._transaction() as db:
            (version,) = db.execute("PRAGMA user_version").fetchone()
            fresh = version != SCHEMA_VERSION
            if fresh:
                db.execute("DROP TABLE IF EXISTS runs")  # its indexes go with it
                db.execute("DROP TABLE IF EXISTS projection")
                for statement in _SCHEMA:
                    db.execute(statement)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute(_PROJECTION_STATE)
        self._open_reader()
        return bool(fresh)

    def upsert(self, artifacts: Iterable[dict[str, Any]]) -> None:
        """Add or refresh the rows of these artifacts, in one transaction."""
        self.apply(artifacts)

    def clear(self, state: dict[str, str] | None = None) -> None:
        """Remove every row; ``state`` replaces the projection's state in the same transaction."""
        with self._transaction() as db:
            db.execute("DELETE FROM runs")
            if state is not None:
                db.execute("DELETE FROM projection")
                _put_state(db, state)

    def apply(
        self,
        artifacts: Iterable[dict[str, Any]],
        removed: Iterable[str] = (),
        state: dict[str, str] | None = None,
    ) -> None:
        """Upsert ``artifacts``, delete the rows of ``removed`` run ids and record ``state``,
        all in one transaction (a crash keeps all of it or none)."""
        placeholders = ", ".join("?" * len(COLUMNS))
        with self._transaction() as db:
            db.executemany(
                f"INSERT OR REPLACE INTO runs ({', '.join(COLUMNS)}) VALUES ({placeholders})",
                [row_of(a) for a in artifacts],
            )
            gone = list(removed)
            for start in range(0, len(gone), _CHUNK):  # one scan a chunk (no run_id index)
                chunk = gone[start : start + _CHUNK]
                db.execute(
                    f"DELETE FROM runs WHERE run_id IN ({', '.join('?' * len(chunk))})", chunk
                )
            _put_state(db, state or {})

    def state(self) -> dict[str, str]:
        """The projection's state as last committed (by any process sharing the file)."""
        assert self._reader is not None, "open() the index first"
        with self._read_lock:
            rows = self._reader.execute("SELECT key, value FROM projection").fetchall()
        return dict(rows)

    def count(self) -> int:
        assert self._db is not None
        with self._lock:
            (n,) = self._db.execute("SELECT count(*) FROM runs").fetchone()
        return int(n)

    def pending_explanations(self) -> tuple[int, str | None]:
        """(runs whose explanation is PENDING, the run id of the first created of them); both
        from the ``runs_explanation_status`` index, without reading a row."""
        assert self._reader is not None, "open() the index first"
        where = "WHERE explanation_status = 'PENDING'"
        with self._read_lock:
            (count,) = self._reader.execute(f"SELECT count(*) FROM runs {where}").fetchone()
            oldest = self._reader.execute(
                f"SELECT run_id FROM runs {where} ORDER BY created_at_utc, run_id LIMIT 1"
            ).fetchone()
        return int(count), (str(oldest[0]) if oldest else None)

    def query(self, query: Query) -> list[dict[str, Any]]:
        """Up to ``limit + 1`` summaries, newest first (the extra row says a next page exists)."""
        where, params = _where(query)
        sql = (
            f"SELECT {', '.join(SUMMARY)} FROM runs {where} "
            "ORDER BY created_at_utc DESC, run_id DESC LIMIT ?"
        )
        assert self._reader is not None, "open() the index first"
        with self._read_lock:
            rows = self._reader.execute(sql, [*params, query.limit + 1]).fetchall()
        return [dict(zip(SUMMARY, row, strict=True)) for row in rows]


def _put_state(db: sqlite3.Connection, state: dict[str, str]) -> None:
    db.executemany("INSERT OR REPLACE INTO projection (key, value) VALUES (?, ?)", state.items())


def _after_prefix(prefix: str) -> str | None:
    """The least string above all that start with ``prefix`` (binary collation); None: none."""
    stem = prefix.rstrip("\U0010ffff")  # the last code point has no successor
    return stem[:-1] + chr(ord(stem[-1]) + 1) if stem else None


def _where(query: Query) -> tuple[str, Sequence[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in query.equals:
        assert column in EQUALITY_FILTERS
        clauses.append(f"{column} = ?")
        params.append(value)
    if query.tool_id_prefix is not None:  # as a range, so that runs_tool_id serves it
        clauses.append("tool_id >= ?")
        params.append(query.tool_id_prefix)
        upper = _after_prefix(query.tool_id_prefix)
        if upper is not None:
            clauses.append("tool_id < ?")
            params.append(upper)
    if query.created_from is not None:
        clauses.append("created_at_utc >= ?")
        params.append(query.created_from)
    if query.created_to is not None:
        clauses.append("created_at_utc <= ?")
        params.append(query.created_to)
    if query.after is not None:
        clauses.append("(created_at_utc, run_id) < (?, ?)")
        params += list(query.after)
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", params
