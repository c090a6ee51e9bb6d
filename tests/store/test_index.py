"""The list index: ordering, filters, keyset pages, and repair from the artifacts."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from contracts.transparency import leaf_record
from tests.support import rewrite_stored
from worker.store.base import NewRun, Query
from worker.store.files import FileStore
from worker.store.index import RunIndex
from worker.store.revisions import created_entry, encode


def artifact(n: int, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "run_id": f"run_{n:032x}",
        "created_at_utc": f"2026-11-24T10:00:{n % 60:02d}.000000+00:00",
        "status": "OK",
        "event_type": "feasibility",
        "mode": "rosette",
        "tool_id": f"saw-{n % 3}",
        "source": "engine-a",
        "event_id": f"evt-{n}",
        "recorded_at_utc": f"2026-11-24T10:00:{n % 60:02d}.000000+00:00",
        "content_sha256": f"{n:064x}",
        "decision": {"risk_level": "GREEN"},
        "explanation_status": "NONE",
        "revision": 1,
        "hashes": {"event_sha256": "0" * 64},
    }
    base.update(fields)
    return base


async def ids(store: FileStore, query: Query) -> list[str]:
    return [row["run_id"] for row in await store.list_runs(query)]


class TestQuery:
    """Newest first by (created_at_utc, run_id), filtered, one page at a time."""

    async def test_order_and_filters(self, store: FileStore) -> None:
        """Rows come newest first; filters combine with AND."""
        runs = [artifact(i, status="BLOCKED" if i % 2 else "OK") for i in range(10)]
        await store.create_runs([NewRun(a["run_id"], a) for a in runs])
        newest_first = [a["run_id"] for a in sorted(runs, key=lambda a: a["created_at_utc"])][::-1]
        assert await ids(store, Query(limit=100)) == newest_first
        blocked = await ids(store, Query(equals=(("status", "BLOCKED"),), limit=100))
        assert blocked == [r for r in newest_first if int(r[4:], 16) % 2]
        both = Query(equals=(("status", "OK"), ("tool_id", "saw-0")), limit=100)
        assert await ids(store, both) == [
            r for r in newest_first if int(r[4:], 16) % 2 == 0 and int(r[4:], 16) % 3 == 0
        ]

    async def test_prefix_and_range(self, store: FileStore) -> None:
        """``tool_id_prefix`` matches the start; the time range is inclusive at both ends."""
        runs = [artifact(i, tool_id=f"{'saw' if i < 5 else 'mill'}-{i}") for i in range(10)]
        await store.create_runs([NewRun(a["run_id"], a) for a in runs])
        assert len(await ids(store, Query(tool_id_prefix="saw", limit=100))) == 5
        assert len(await ids(store, Query(tool_id_prefix="sa", limit=100))) == 5
        assert len(await ids(store, Query(tool_id_prefix="saw-4", limit=100))) == 1
        assert await ids(store, Query(tool_id_prefix="sax", limit=100)) == []
        assert await ids(store, Query(tool_id_prefix="\U0010ffff", limit=100)) == []
        ranged = Query(
            created_from="2026-11-24T10:00:03.000000+00:00",
            created_to="2026-11-24T10:00:05.000000+00:00",
            limit=100,
        )
        assert await ids(store, ranged) == [f"run_{n:032x}" for n in (5, 4, 3)]

    async def test_keyset_pages_stable_under_inserts(self, store: FileStore) -> None:
        """Paging on (created_at_utc, run_id) neither repeats nor skips when runs arrive."""
        same_time = "2026-11-24T10:00:00.000000+00:00"
        runs = [artifact(i, created_at_utc=same_time) for i in range(7)]
        await store.create_runs([NewRun(a["run_id"], a) for a in runs])
        first = await store.list_runs(Query(limit=3))
        assert len(first) == 4  # limit + 1 says there is a next page
        later = artifact(100, created_at_utc="2026-11-25T00:00:00.000000+00:00")
        await store.create_runs([NewRun(later["run_id"], later)])
        seen = [r["run_id"] for r in first[:3]]
        after: tuple[str, str] | None = (first[2]["created_at_utc"], first[2]["run_id"])
        while after is not None:
            page = await store.list_runs(Query(limit=3, after=after))
            seen += [r["run_id"] for r in page[:3]]
            after = (page[2]["created_at_utc"], page[2]["run_id"]) if len(page) > 3 else None
        assert seen == sorted((a["run_id"] for a in runs), reverse=True)

    async def test_filtered_pages_through_ties(self, store: FileStore) -> None:
        """A filter's index orders by creation time only: ties on it are still paged by run
        id, none repeated or skipped, whichever page boundary falls inside them."""
        same_time = "2026-11-24T10:00:00.000000+00:00"
        runs = [artifact(i, created_at_utc=same_time, tool_id=f"saw-{i % 2}") for i in range(15)]
        runs += [artifact(i) for i in range(20, 26)]  # saw-0/1/2 at other times
        await store.create_runs([NewRun(a["run_id"], a) for a in runs])
        wanted = sorted(
            (a for a in runs if a["tool_id"] == "saw-1"),
            key=lambda a: (a["created_at_utc"], a["run_id"]),
            reverse=True,
        )
        for limit in (1, 2, 3, 4):
            seen: list[str] = []
            after: tuple[str, str] | None = None
            while True:
                page = await store.list_runs(
                    Query(equals=(("tool_id", "saw-1"),), limit=limit, after=after)
                )
                seen += [r["run_id"] for r in page[:limit]]
                if len(page) <= limit:
                    break
                after = (page[limit - 1]["created_at_utc"], page[limit - 1]["run_id"])
            assert seen == [a["run_id"] for a in wanted]


async def stored_then_closed(data: Path, count: int) -> list[dict[str, Any]]:
    """``count`` runs created in a store on ``data``, which is closed again."""
    store = FileStore(data)
    await store.open()
    runs = [artifact(i) for i in range(count)]
    await store.create_runs([NewRun(a["run_id"], a) for a in runs])
    store.close()
    return runs


async def ids_after_reopen(data: Path) -> list[str]:
    """Every run id the index lists once a new store has opened ``data``."""
    store = FileStore(data)
    await store.open()
    try:
        return await ids(store, Query(limit=500))
    finally:
        store.close()


class TestRows:
    """A run has one row, found by (created_at_utc, run_id): run ids have no index of their own."""

    def test_each_revision_replaces_the_row(self, tmp_path: Path) -> None:
        index = RunIndex(tmp_path / "index.sqlite")
        index.open()
        first = artifact(1)
        index.upsert([first, artifact(2)])
        index.upsert([dict(first, revision=2, explanation_status="PENDING")])
        index.upsert([dict(first, revision=3, explanation_status="READY")])
        rows = index.query(Query(limit=10))
        assert [(r["run_id"], r["revision"]) for r in rows] == [
            (artifact(2)["run_id"], 1),
            (first["run_id"], 3),
        ]
        assert index.count() == 2
        index.close()

    def test_without_a_creation_time_still_one_row(self, tmp_path: Path) -> None:
        index = RunIndex(tmp_path / "index.sqlite")
        index.open()
        bare = artifact(5)
        del bare["created_at_utc"]
        index.upsert([bare, artifact(6)])
        index.upsert([dict(bare, revision=2)])
        assert index.count() == 2
        assert index.query(Query(limit=10))[-1]["run_id"] == bare["run_id"]
        index.close()

    def test_removed_beyond_one_statement(self, tmp_path: Path) -> None:
        """A jetstream store's deleted keys: more than a statement's chunk, unknown ids too."""
        index = RunIndex(tmp_path / "index.sqlite")
        index.open()
        runs = [artifact(i) for i in range(1200)]
        index.upsert(runs)
        gone = [a["run_id"] for a in runs[:700]] + [f"run_{'f' * 32}"]
        index.apply([], removed=gone)
        kept = {r["run_id"] for r in index.query(Query(limit=1000))}
        assert kept == {a["run_id"] for a in runs[700:]}
        index.close()


class TestRepair:
    """The index is a projection: it is rebuilt or repaired from the artifacts."""

    async def test_missing_index_rebuilt(self, tmp_path: Path) -> None:
        """A data dir whose index was lost gets it rebuilt at open."""
        data = tmp_path / "data"
        await stored_then_closed(data, 25)
        for path in data.glob("index.sqlite*"):
            path.unlink()
        assert len(await ids_after_reopen(data)) == 25

    @pytest.mark.parametrize("version", [1, 2])
    async def test_index_of_another_version_rebuilt(self, tmp_path: Path, version: int) -> None:
        """An index written by an older layout (another ``user_version``) is rebuilt at open."""
        data = tmp_path / "data"
        runs = await stored_then_closed(data, 12)
        with sqlite3.connect(data / "index.sqlite") as db:
            db.execute("DROP TABLE runs")
            db.execute("CREATE TABLE runs (run_id TEXT PRIMARY KEY, stale TEXT) WITHOUT ROWID")
            db.execute(f"PRAGMA user_version={version}")
        assert sorted(await ids_after_reopen(data)) == sorted(a["run_id"] for a in runs)

    async def test_index_of_a_jetstream_store_rebuilt(self, tmp_path: Path) -> None:
        """Back on the files store after the jetstream store: its projection is not kept."""
        data = tmp_path / "data"
        runs = await stored_then_closed(data, 5)
        index = RunIndex(data / "index.sqlite")
        index.open()
        index.apply([artifact(99)], state={"stream_created": "t0", "applied_seq": "9"})
        index.close()
        assert sorted(await ids_after_reopen(data)) == sorted(a["run_id"] for a in runs)

    async def test_interrupted_commit_indexed(self, tmp_path: Path) -> None:
        """Runs placed by a process that died before its index transaction get indexed."""
        data = tmp_path / "data"
        first = FileStore(data)
        await first.open()
        orphan = artifact(7)
        data_of = encode(orphan)
        record = leaf_record(orphan, created_entry(orphan), artifact_bytes=data_of)
        first.log.create([record], first.segments.append([data_of]))  # stored, not indexed
        first.close()
        dead = data / "tmp" / "dead-process"
        dead.mkdir()
        (dead / "commit.0.intent").write_text(f"{orphan['run_id']}\nrun_{'f' * 32}")
        second = FileStore(data)
        await second.open()
        assert await ids(second, Query(limit=10)) == [orphan["run_id"]]
        assert not dead.exists()
        second.close()

    async def test_reindex(self, store: FileStore) -> None:
        """``reindex`` rebuilds every row from the files, reporting progress."""
        runs = [artifact(i) for i in range(30)]
        await store.create_runs([NewRun(a["run_id"], a) for a in runs])
        changed = dict(runs[0], status="ERROR")
        rewrite_stored(store.root, changed["run_id"], encode(changed))
        seen: list[int] = []
        assert store.reindex(progress=seen.append, chunk=10) == 30
        assert seen == [10, 20, 30]
        errors = await ids(store, Query(equals=(("status", "ERROR"),)))
        assert errors == [changed["run_id"]]
        assert (await store.get_run(changed["run_id"]) or {})["status"] == "ERROR"


class TestPendingExplanations:
    """What the ``rmos_explanations_pending*`` gauges read: a count and the first created."""

    async def test_count_and_first_created(self, store: FileStore) -> None:
        assert store.index.pending_explanations() == (0, None)
        runs = [artifact(i, explanation_status="PENDING" if i % 3 else "READY") for i in range(9)]
        await store.create_runs([NewRun(a["run_id"], a) for a in runs])
        assert store.index.pending_explanations() == (6, runs[1]["run_id"])

    async def test_from_the_index_alone(self, store: FileStore) -> None:
        with sqlite3.connect(store.index.path) as db:
            plans = [
                " ".join(str(c) for c in row)
                for sql in (
                    "SELECT count(*) FROM runs WHERE explanation_status = 'PENDING'",
                    "SELECT run_id FROM runs WHERE explanation_status = 'PENDING' "
                    "ORDER BY created_at_utc, run_id LIMIT 1",
                )
                for row in db.execute("EXPLAIN QUERY PLAN " + sql)
            ]
        assert all("COVERING INDEX runs_explanation_status" in plan for plan in plans), plans
