"""The Merkle log of the jetstream store: one leaf per stored revision in the log stream, and
each host's copy of it (``log.sqlite``), against real nats-server processes.

Stores run in this process (a connection and a data dir each, the follower in its own thread as
in a worker); what they wrote is checked against the stream read independently: every revision
logged exactly once, and the copy's head equal to a head recomputed from the stream's messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import shutil
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import nats
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType

from contracts import merkle
from contracts.canonical import canonical, sha256_json
from contracts.subjects import Subjects
from contracts.transparency import leaf_record
from tests.support import eventually
from worker.core.ingest import content_sha256
from worker.errors import StoreOutageError, TransientError
from worker.nats_cluster import NatsCluster
from worker.nats_server import NatsServer
from worker.store.base import Change, Decide, NewRun
from worker.store.files import FileStore
from worker.store.jetstream import (
    EXPECTED_LAST_SUBJECT_SEQ,
    ForeignLogError,
    JetStreamStore,
)
from worker.store.merkle_log import MerkleLog
from worker.store.revisions import created_entry, encode

pytestmark = pytest.mark.integration
CLUSTER = pytest.mark.parametrize("store", ["jetstream"], indirect=True)  # a 3-node cluster
SUBJECTS = Subjects()
T = TypeVar("T")
LOG = "RMOS_LOG"


def rid(n: int) -> str:
    return f"run_{n:032x}"


def artifact(n: int) -> dict[str, Any]:
    """A stored revision 1 as ingest makes it (the fields a leaf and a change read)."""
    made: dict[str, Any] = {
        "schema": "rmos.run_artifact.v1",
        "run_id": rid(n),
        "revision": 1,
        "source": "engine-a",
        "event_id": f"evt-{n}",
        "status": "OK",
        "created_at_utc": "2026-12-01T00:00:00.000000+00:00",
        "recorded_at_utc": "2026-12-01T00:00:01.000000+00:00",
        "updated_at_utc": "2026-12-01T00:00:01.000000+00:00",
        "meta": {},
    }
    made["content_sha256"] = content_sha256(made)
    return made


def set_meta(key: str, value: Any) -> Decide:
    """A change of one meta key; none when the run holds that value already (a retry)."""

    def decide(current: dict[str, Any]) -> Change | None:
        if current.get("meta", {}).get(key) == value:
            return None
        return Change({"meta": {**current["meta"], key: value}}, change="meta", by=f"set {key}")

    return decide


def no_change(current: dict[str, Any]) -> Change | None:
    return None


async def retried(write: Callable[[], Awaitable[T]], attempts: int = 20) -> T:
    """A write retried while the store fails for a passing cause, as a worker retries it (a
    new cluster's stream leaders may still move in its first seconds)."""
    for _ in range(attempts - 1):
        try:
            return await write()
        except TransientError:
            await asyncio.sleep(0.2)
    return await write()


async def connect(url: str) -> Client:
    return await nats.connect(servers=url.split(","))


@contextlib.asynccontextmanager
async def opened(
    url: str, data_dir: Path, *, follow: bool = True, replicas: int = 1
) -> AsyncIterator[JetStreamStore]:
    """A store as a worker has it: its own connection, its data dir, its follower running."""
    nc = await connect(url)
    js = nc.jetstream()
    store = JetStreamStore(lambda: js, lambda: connect(url), SUBJECTS, data_dir, replicas=replicas)
    try:
        await store.open()
    except BaseException:
        store.close()
        await nc.close()
        raise
    for stream in ("KV_RMOS_RUNS", "RMOS_RUN_HISTORY", LOG):  # placed: each has a leader
        await eventually(functools.partial(_led, js, stream))
    stop = asyncio.Event()
    follower = asyncio.create_task(store.projection.run(stop)) if follow else None
    try:
        yield store
    finally:
        stop.set()
        if follower is not None:
            await follower
        store.close()
        await nc.close()


async def _led(js: JetStreamContext, stream: str) -> bool | None:
    info = await js.stream_info(stream)
    return True if info.cluster is None or info.cluster.leader else None


@pytest.fixture
async def admin(nats_server: NatsServer) -> AsyncIterator[JetStreamContext]:
    """A connection of the test's own, to read (and tamper with) the streams directly."""
    nc = await connect(nats_server.url)
    yield nc.jetstream()
    await nc.close()


async def stream_leaves(js: JetStreamContext) -> list[bytes]:
    """Every message of the log stream, in order, read one by one from the leader."""
    last = (await js.stream_info(LOG)).state.last_seq
    return [(await js.get_msg(LOG, seq)).data or b"" for seq in range(1, last + 1)]


def head_of(leaves: list[bytes]) -> tuple[int, bytes]:
    """(size, root) recomputed from the leaves' bytes alone (``CompactRange``)."""
    tree = merkle.CompactRange()
    for data in leaves:
        tree.append(merkle.leaf_hash(data))
    return tree.size, tree.root()


async def copy_reaches(store: JetStreamStore, size: int) -> None:
    assert await store.log_reaches(size, timeout=20), f"copy at {store.log.size()}, not {size}"


async def assert_logged(store: JetStreamStore, js: JetStreamContext, run_ids: list[str]) -> None:
    """Every revision of these runs has exactly one leaf, in revision order, naming its stored
    entry (and the current artifact for the current revision); nothing else is in the log; the
    copy's head is the stream's."""
    leaves = await stream_leaves(js)
    records = [json.loads(data) for data in leaves]
    assert all(canonical(r) == data for r, data in zip(records, leaves, strict=True))
    counts = Counter((r["run_id"], r["revision"]) for r in records)
    assert set(counts.values()) == {1}, [k for k, n in counts.items() if n > 1]
    expected: set[tuple[str, int]] = set()
    for run_id in run_ids:
        current = await store.get_run(run_id)
        history = await store.history(run_id)
        assert current is not None
        assert history is not None
        expected |= {(run_id, r) for r in range(1, current["revision"] + 1)}
        mine = [r for r in records if r["run_id"] == run_id]
        assert [r["revision"] for r in mine] == list(range(1, current["revision"] + 1))
        assert [r["entry_sha256"] for r in mine] == [sha256_json(e) for e in history]
        assert mine[-1] == leaf_record(current, history[-1])
    assert set(counts) == expected
    await copy_reaches(store, len(leaves))
    assert await asyncio.to_thread(store.log.head) == head_of(leaves)


class TestOneLeafPerRevision:
    """Creates and updates log each revision they store, once."""

    async def test_created_and_updated(
        self, nats_server: NatsServer, admin: JetStreamContext, tmp_path: Path
    ) -> None:
        async with opened(nats_server.url, tmp_path / "a") as store:
            runs = [NewRun(rid(n), artifact(n)) for n in range(20)]
            assert all(c.created for c in await store.create_runs(runs))
            again = await store.create_runs(runs[:5])  # duplicates: nothing more logged
            assert not any(c.created for c in again)
            for n in range(0, 20, 3):
                for step in range(n % 4 + 1):
                    assert await store.update_run(rid(n), set_meta(f"k{step}", step))
            assert await store.update_run(rid(0), no_change) is not None
            await assert_logged(store, admin, [r.run_id for r in runs])
            logged = await store.logged(rid(3))
            assert [leaf.record["revision"] for leaf in logged] == [1, 2, 3, 4, 5]
            assert [leaf.index for leaf in logged] == sorted(leaf.index for leaf in logged)

    async def test_leaf_acknowledged_with_the_write(
        self, nats_server: NatsServer, admin: JetStreamContext, tmp_path: Path
    ) -> None:
        """When create_runs or update_run returns, the leaf is in the stream (not only later)."""
        async with opened(nats_server.url, tmp_path / "a", follow=False) as store:
            await store.create_runs([NewRun(rid(1), artifact(1))])
            assert len(await stream_leaves(admin)) == 1
            await store.update_run(rid(1), set_meta("a", 1))
            [first, second] = [json.loads(x) for x in await stream_leaves(admin)]
            assert (first["revision"], second["revision"]) == (1, 2)


@CLUSTER
class TestTwoHosts:
    """Two stores (two connections, two data dirs) on a 3-node cluster, racing on the same runs."""

    async def test_concurrent_writers(self, nats_server: NatsCluster, tmp_path: Path) -> None:
        url = nats_server.url
        async with (
            opened(url, tmp_path / "a", replicas=3) as a,
            opened(url, tmp_path / "b", replicas=3) as b,
        ):
            runs = [NewRun(rid(n), artifact(n)) for n in range(4)]
            await asyncio.gather(
                retried(lambda: a.create_runs(runs)), retried(lambda: b.create_runs(runs))
            )

            def update(store: JetStreamStore, run_id: str, i: int) -> Awaitable[Any]:
                return retried(lambda: store.update_run(run_id, set_meta(f"k{i}", i)))

            await asyncio.gather(
                *(update(a if i % 2 else b, r.run_id, i) for r in runs for i in range(12))
            )
            nc = await connect(url)
            try:
                js = nc.jetstream()
                for store in (a, b):
                    await assert_logged(store, js, [run.run_id for run in runs])
                assert len(await stream_leaves(js)) == 4 * 13
            finally:
                await nc.close()
            assert a.log.head() == b.log.head()


class TestRepairs:
    """A crash between a write and its leaf leaves a revision unlogged until the next writer."""

    async def test_repaired_by_two_writers_at_once(
        self, nats_server: NatsServer, admin: JetStreamContext, tmp_path: Path
    ) -> None:
        """Runs created without their leaves, met again by two stores at once: each store
        logs them, and each revision gets one leaf (the one that lost the race finds it)."""
        url = nats_server.url
        async with opened(url, tmp_path / "a") as a, opened(url, tmp_path / "b") as b:
            runs = [NewRun(rid(n), artifact(n)) for n in range(40)]
            for run in runs:
                headers = {EXPECTED_LAST_SUBJECT_SEQ: "0"}
                subject = f"$KV.RMOS_RUNS.{run.run_id}"
                await admin.publish(subject, encode(run.artifact), headers=headers)
            await asyncio.gather(a.create_runs(runs), b.create_runs(runs))
            await assert_logged(a, admin, [run.run_id for run in runs])
            await assert_logged(b, admin, [run.run_id for run in runs])

    async def test_create_before_its_leaf(
        self, nats_server: NatsServer, admin: JetStreamContext, tmp_path: Path
    ) -> None:
        """The KV create landed, the leaf did not (a crash): the redelivered create logs it."""
        async with opened(nats_server.url, tmp_path / "a") as store:
            made = artifact(1)
            headers = {EXPECTED_LAST_SUBJECT_SEQ: "0"}
            await admin.publish(f"$KV.RMOS_RUNS.{rid(1)}", encode(made), headers=headers)
            assert await stream_leaves(admin) == []
            [again] = await store.create_runs([NewRun(rid(1), made)])
            assert not again.created
            assert await stream_leaves(admin) == [canonical(leaf_record(made, created_entry(made)))]
            await store.create_runs([NewRun(rid(1), made)])  # once only
            await assert_logged(store, admin, [rid(1)])

    async def test_swap_before_its_leaf(
        self, nats_server: NatsServer, admin: JetStreamContext, tmp_path: Path
    ) -> None:
        """A swap whose leaf failed: a change that is no change logs it (a redelivered patch);
        the next swap logs it before its own revision."""
        async with opened(nats_server.url, tmp_path / "a") as store:
            await store.create_runs([NewRun(rid(1), artifact(1))])
            append = store._append_leaf

            async def crashed(run_id: str, record: dict[str, Any], *, after: int) -> int:
                raise StoreOutageError("the leaf never went out")

            store._append_leaf = crashed  # type: ignore[method-assign]
            with pytest.raises(StoreOutageError):
                await store.update_run(rid(1), set_meta("a", 1))
            store._append_leaf = append  # type: ignore[method-assign]
            assert (await store.get_run(rid(1)) or {})["revision"] == 2
            assert len(await stream_leaves(admin)) == 1
            result = await store.update_run(rid(1), no_change)
            assert result is not None
            assert not result[1]
            assert [json.loads(x)["revision"] for x in await stream_leaves(admin)] == [1, 2]

            store._append_leaf = crashed  # type: ignore[method-assign]
            with pytest.raises(StoreOutageError):
                await store.update_run(rid(1), set_meta("b", 2))
            store._append_leaf = append  # type: ignore[method-assign]
            await store.update_run(rid(1), set_meta("c", 3))  # logs 3, then its own 4
            await assert_logged(store, admin, [rid(1)])

    async def test_swap_made_by_hand(
        self, nats_server: NatsServer, admin: JetStreamContext, tmp_path: Path
    ) -> None:
        """A revision stored without its leaf (entry and swap published as the store does,
        nothing after): the next update gives it its leaf first."""
        async with opened(nats_server.url, tmp_path / "a") as store:
            made = artifact(1)
            await store.create_runs([NewRun(rid(1), made)])
            subject = f"$KV.RMOS_RUNS.{rid(1)}"
            current = await admin.get_msg("KV_RMOS_RUNS", subject=subject)
            new = {**made, "revision": 2, "meta": {"by": "hand"}}
            entry = {
                "revision": 2,
                "at": new["updated_at_utc"],
                "change": "meta",
                "by": "hand",
                "changed": ["meta.by"],
            }
            ack = await admin.publish(
                "rmos.runs.v1.store.history." + rid(1), encode(entry), headers={"Rmos-Prev-Seq": ""}
            )
            headers = {
                EXPECTED_LAST_SUBJECT_SEQ: str(current.seq),
                "Rmos-History-Seq": str(ack.seq),
            }
            await admin.publish(subject, encode(new), headers=headers)
            await store.update_run(rid(1), set_meta("next", 1))
            assert [json.loads(x)["revision"] for x in await stream_leaves(admin)] == [1, 2, 3]
            await assert_logged(store, admin, [rid(1)])


class TestCopy:
    """This host's copy of the log: rebuilt from the stream whenever needed."""

    async def test_data_dir_deleted(
        self, nats_server: NatsServer, admin: JetStreamContext, tmp_path: Path
    ) -> None:
        data = tmp_path / "data"
        async with opened(nats_server.url, data) as store:
            await store.create_runs([NewRun(rid(n), artifact(n)) for n in range(30)])
            for n in range(10):
                await store.update_run(rid(n), set_meta("x", n))
            await copy_reaches(store, 40)
            head = store.log.head()
        shutil.rmtree(data)
        async with opened(nats_server.url, data) as store:
            await copy_reaches(store, 40)
            assert store.log.head() == head == head_of(await stream_leaves(admin))

    async def test_stream_recreated(
        self, nats_server: NatsServer, admin: JetStreamContext, tmp_path: Path
    ) -> None:
        """A log stream deleted and made anew is another stream: the copy starts over."""
        async with opened(nats_server.url, tmp_path / "a") as store:
            await store.create_runs([NewRun(rid(n), artifact(n)) for n in range(5)])
            await copy_reaches(store, 5)
            info = await admin.stream_info(LOG)
            assert info.created is not None
            old = info.created.isoformat()
            await admin.delete_stream(LOG)
            await admin.add_stream(info.config)
            await store.create_runs([NewRun(rid(n), artifact(n)) for n in range(100, 102)])

            async def rebuilt() -> bool | None:
                state = await asyncio.to_thread(store.log.state)
                fresh = state.get("stream_created") != old
                return True if fresh and store.log.size() == 2 else None

            await eventually(rebuilt)
            assert store.log.head() == head_of(await stream_leaves(admin))

    async def test_catch_up_on_a_fresh_data_dir(
        self, nats_server: NatsServer, admin: JetStreamContext, tmp_path: Path
    ) -> None:
        """``catch_up_log`` without a follower, with only the log opened (as ``audit`` does)."""
        async with opened(nats_server.url, tmp_path / "a", follow=False) as writer:
            await writer.create_runs([NewRun(rid(n), artifact(n)) for n in range(700)])
            nc = await connect(nats_server.url)
            js = nc.jetstream()
            fresh = JetStreamStore(lambda: js, lambda: connect(""), SUBJECTS, tmp_path / "audit")
            (tmp_path / "audit").mkdir()
            await asyncio.to_thread(fresh.log.open)
            try:
                assert await fresh.catch_up_log() == 700
                await writer.update_run(rid(1), set_meta("late", 1))
                assert await fresh.catch_up_log() == 701
                assert fresh.log.head() == head_of(await stream_leaves(admin))
                assert [x.record["revision"] for x in await fresh.logged(rid(1))] == [1, 2]
            finally:
                fresh.log.close()
                await nc.close()

    async def test_catch_up_beside_the_follower(
        self, nats_server: NatsServer, admin: JetStreamContext, tmp_path: Path
    ) -> None:
        """Two appliers of one copy (the follower, a catch-up of another store on the same data
        dir) while leaves keep coming: a batch applied at a taken position is refused and the
        applier resumes from the copy; the copy ends as the stream is."""
        data = tmp_path / "data"
        async with (
            opened(nats_server.url, data) as store,
            opened(nats_server.url, data, follow=False) as other,
        ):

            async def write() -> None:
                for n in range(0, 600, 50):
                    await store.create_runs([NewRun(rid(i), artifact(i)) for i in range(n, n + 50)])

            writing = asyncio.create_task(write())
            while not writing.done():
                await other.catch_up_log()
            await writing
            await other.catch_up_log()
            await copy_reaches(store, 600)
            assert other.log.head() == head_of(await stream_leaves(admin))

    async def test_files_store_log_refused(self, nats_server: NatsServer, tmp_path: Path) -> None:
        """A data dir whose ``log.sqlite`` is a files store's log is never emptied for a copy."""
        data = tmp_path / "files"
        data.mkdir()
        files_log = MerkleLog(data / "log.sqlite")
        files_log.open()
        files_log.append([leaf_record(artifact(1), created_entry(artifact(1)))])
        files_log.close()
        with pytest.raises(ForeignLogError, match="files store"):
            async with opened(nats_server.url, data):
                pass
        files_log.open()
        assert files_log.size() == 1
        files_log.close()


class TestStream:
    """The log stream as declared: append-only."""

    async def test_declared_append_only(
        self, nats_server: NatsServer, admin: JetStreamContext, tmp_path: Path
    ) -> None:
        async with opened(nats_server.url, tmp_path / "a", follow=False) as store:
            await store.create_runs([NewRun(rid(1), artifact(1))])
        config = (await admin.stream_info(LOG)).config
        assert config.subjects == ["rmos.runs.v1.store.log.*"]
        assert (config.deny_delete, config.deny_purge) == (True, True)
        assert (config.storage, config.retention) == (StorageType.FILE, RetentionPolicy.LIMITS)
        with pytest.raises(nats.js.errors.APIError):
            await admin.delete_msg(LOG, 1)
        with pytest.raises(nats.js.errors.APIError):
            await admin.purge_stream(LOG)
        assert len(await stream_leaves(admin)) == 1


class TestAdopt:
    """``migrate``'s ``adopt``: a files store's runs arrive with the leaves its log holds."""

    async def test_leaves_copied(
        self, nats_server: NatsServer, admin: JetStreamContext, tmp_path: Path
    ) -> None:
        source = FileStore(tmp_path / "files")
        await source.open()
        try:
            await source.create_runs([NewRun(rid(n), artifact(n)) for n in range(3)])
            for step in range(3):
                await source.update_run(rid(1), set_meta("s", step))
            async with opened(nats_server.url, tmp_path / "js") as target:

                async def adopt(run_id: str) -> str:
                    artifact, history = await source.get_run(run_id), await source.history(run_id)
                    assert artifact is not None
                    assert history is not None
                    leaves = [leaf.record for leaf in await source.logged(run_id)]
                    return await target.adopt(artifact, history, leaves)

                assert [await adopt(rid(n)) for n in range(3)] == ["copied"] * 3
                assert [await adopt(rid(n)) for n in range(3)] == ["present"] * 3  # nothing more
                for n in range(3):
                    mine = [leaf.record for leaf in await source.logged(rid(n))]
                    assert [leaf.record for leaf in await target.logged(rid(n))] == mine
                await assert_logged(target, admin, [rid(n) for n in range(3)])
                assert len(await stream_leaves(admin)) == 6
        finally:
            source.close()

    async def test_interrupted_before_the_leaves(
        self, nats_server: NatsServer, admin: JetStreamContext, tmp_path: Path
    ) -> None:
        """Run again after the artifact landed but not its leaves, a run found present gets
        them; a source without leaves gives the current revision's only."""
        async with opened(nats_server.url, tmp_path / "js") as target:
            made = artifact(1)
            created = created_entry(made)
            headers = {EXPECTED_LAST_SUBJECT_SEQ: "0"}
            await admin.publish(f"$KV.RMOS_RUNS.{rid(1)}", encode(made), headers=headers)
            assert await target.adopt(made, [created], [leaf_record(made, created)]) == "present"
            assert await stream_leaves(admin) == [canonical(leaf_record(made, created))]

            third = {**artifact(3), "revision": 3, "meta": {"x": 2}}
            history = [created_entry(third)] + [
                {"revision": r, "at": "t", "change": "meta", "by": "b", "changed": ["meta.x"]}
                for r in (2, 3)
            ]
            assert await target.adopt(third, history, ()) == "copied"
            logged = [leaf.record for leaf in await target.logged(rid(3))]
            assert logged == [leaf_record(third, history[2])]


class TestStoredRuns:
    """``stored_runs``: every run in the bucket, its bytes and its history's as stored."""

    async def test_every_run_once(
        self, nats_server: NatsServer, admin: JetStreamContext, tmp_path: Path
    ) -> None:
        async with opened(nats_server.url, tmp_path / "a", follow=False) as store:
            await store.create_runs([NewRun(rid(n), artifact(n)) for n in range(300)])
            for step in range(3):
                await store.update_run(rid(7), set_meta("s", step))
            await admin.publish(f"$KV.RMOS_RUNS.{rid(9)}", b"", headers={"KV-Operation": "DEL"})
            runs = {run.run_id: run async for run in store.stored_runs()}
            assert sorted(runs) == sorted(rid(n) for n in range(300) if n != 9)
            for run_id in (rid(0), rid(7)):
                kv = await admin.get_msg("KV_RMOS_RUNS", subject=f"$KV.RMOS_RUNS.{run_id}")
                assert runs[run_id].artifact == kv.data
            history = await store.history(rid(7)) or []
            assert runs[rid(7)].history == [encode(e) for e in history[1:]]
            assert runs[rid(0)].history == []
