"""The jetstream store on a real 3-node cluster: what only a replicated, shared store does.

Two workers with data dirs of their own stand for two hosts: they share the store through the
cluster and nothing else.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest

from contracts.canonical import derive_run_id
from tests.integration.test_metrics import free_ports, scrape
from tests.support import WorkerProcess, event, eventually, stored, wait_settled
from worker.client import RunsApiError, RunsClient
from worker.nats_cluster import NatsCluster
from worker.nats_server import NatsServer
from worker.store.revisions import encode

pytestmark = pytest.mark.integration
CLUSTER = pytest.mark.parametrize("store", ["jetstream"], indirect=True)  # a 3-node cluster
JETSTREAM = {"RMOS_STORE": "jetstream"}
STREAMS = [
    "RMOS_RUN_EVENTS", "RMOS_EXPLAIN", "RMOS_DLQ", "KV_RMOS_RUNS", "KV_RMOS_BLOB_META",
    "OBJ_RMOS_BLOBS", "RMOS_RUN_HISTORY", "RMOS_LOG", "RMOS_CHECKPOINTS",
]  # fmt: skip


async def publish_all(client: RunsClient, count: int, prefix: str = "evt") -> list[str]:
    """Publish ``count`` events; their run ids."""
    await asyncio.gather(*(client.publish_event(event(f"{prefix}-{i}")) for i in range(count)))
    return [derive_run_id("engine-a", f"{prefix}-{i}") for i in range(count)]


async def listed(client: RunsClient, count: int, timeout: float = 20.0) -> list[str]:
    """Every listed run id once ``list`` shows ``count`` runs (it may be UNAVAILABLE first)."""

    async def probe() -> list[str] | None:
        try:
            ids = [summary.run_id async for summary in client.iter_runs(page_size=200)]
        except RunsApiError as exc:
            if exc.code != "UNAVAILABLE":
                raise
            return None
        return ids if len(ids) == count else None

    return await eventually(probe, timeout)


async def answers(client: RunsClient, run_ids: list[str]) -> dict[str, Any]:
    """What a worker answers for these runs: get, history, and the whole list, paged."""
    return {
        "get": [await client.get(r) for r in run_ids],
        "history": [(await client.history(r)).model_dump() for r in run_ids],
        "list": [s.model_dump() async for s in client.iter_runs(page_size=7)],
    }


@CLUSTER
class TestTwoHosts:
    """Workers on separate data dirs see one store."""

    async def test_identical_answers(
        self, nats_server: NatsCluster, client: RunsClient, tmp_path: Path
    ) -> None:
        """Runs ingested by both, then changed, read the same from either; a cursor made by one
        is valid on the other."""
        a = WorkerProcess(nats_server.url, tmp_path / "a", env=JETSTREAM)
        b = WorkerProcess(nats_server.url, tmp_path / "b", env=JETSTREAM)
        await a.start(client)
        await b.start(client)
        run_ids = await publish_all(client, 60)
        await wait_settled(client.js)
        for run_id in run_ids[:10]:
            await client.patch_meta(run_id, {"ticket": run_id[-4:]})
        await listed(client, 60)

        await b.terminate()  # only a answers
        from_a = await answers(client, run_ids[:10])
        page = await client.list_page(limit=25)
        await b.start(client)
        await a.terminate()  # only b answers
        assert await answers(client, run_ids[:10]) == from_a
        assert page.next_cursor is not None
        rest = await client.list_page(limit=25, cursor=page.next_cursor)
        assert [s.model_dump() for s in rest.items] == from_a["list"][25:50]
        assert len(from_a["list"]) == 60


@CLUSTER
class TestRaces:
    """Compare-and-swap across hosts: no lost update, exactly one winner."""

    async def test_patch_meta_across_hosts(
        self, nats_server: NatsCluster, client: RunsClient, tmp_path: Path
    ) -> None:
        """40 concurrent patches of one run through two workers all land, each in a revision
        of its own, and the history has every revision once; with an expected revision, one
        of ten wins."""
        workers = [WorkerProcess(nats_server.url, tmp_path / n, env=JETSTREAM) for n in "ab"]
        for proc in workers:
            await proc.start(client)
        [run_id] = await publish_all(client, 1)
        await stored(client, run_id)
        await asyncio.gather(*(client.patch_meta(run_id, {f"k{i}": i}) for i in range(40)))
        run = await client.get(run_id)
        assert run["revision"] == 41
        assert run["meta"] == {f"k{i}": i for i in range(40)}
        history = await client.history(run_id)
        assert [r.revision for r in history.revisions] == list(range(1, 42))
        changed = sorted(p for r in history.revisions for p in r.changed)
        assert changed == sorted(f"meta.k{i}" for i in range(40))

        outcomes = await asyncio.gather(
            *(client.patch_meta(run_id, {"winner": i}, expected_revision=41) for i in range(10)),
            return_exceptions=True,
        )
        wins = [o for o in outcomes if not isinstance(o, BaseException)]
        losses = [o for o in outcomes if isinstance(o, RunsApiError)]
        assert len(wins) == 1
        assert len(losses) == 9
        assert {e.code for e in losses} == {"REVISION_CONFLICT"}
        assert (await client.get(run_id))["revision"] == 42

    async def test_deadlines_swept_by_two_hosts(
        self, nats_server: NatsCluster, client: RunsClient, tmp_path: Path
    ) -> None:
        """Two workers sweep the same PENDING runs past their deadline: each run is asked
        again once, then fails once (revisions 1, 2, 3), whichever worker got there first."""
        env = {**JETSTREAM, "RMOS_EXPLAIN_TIMEOUT_S": "0.6", "RMOS_EXPLAIN_MAX_ATTEMPTS": "2"}
        for name in "ab":
            await WorkerProcess(nats_server.url, tmp_path / name, env=env).start(client)
        blocked: dict[str, Any] = {"status": "BLOCKED", "decision": {"risk_level": "RED"}}
        events = [event(f"late-{i}", **blocked) for i in range(5)]
        await asyncio.gather(*(client.publish_event(e) for e in events))
        for e in events:
            run_id = derive_run_id("engine-a", e["event_id"])
            await stored(client, run_id)

            async def failed(run_id: str = run_id) -> dict[str, Any] | None:
                run = await client.get(run_id)
                return run if run["explanation_status"] == "ERROR" else None

            run = await eventually(failed, timeout=30)
            assert (run["revision"], run["explanation_error"]) == (3, "timed out")
            history = await client.history(run_id)
            assert [r.revision for r in history.revisions] == [1, 2, 3]
            assert [r.by for r in history.revisions][1:] == ["deadline", "deadline"]


@CLUSTER
class TestProjection:
    """The list index is this host's projection of the bucket, rebuilt whenever needed."""

    async def test_data_dir_deleted(
        self, nats_server: NatsCluster, client: RunsClient, tmp_path: Path
    ) -> None:
        """A worker whose data dir is gone rebuilds its index from the bucket: nothing lost."""
        data = tmp_path / "data"
        proc = WorkerProcess(nats_server.url, data, env=JETSTREAM)
        await proc.start(client)
        run_ids = await publish_all(client, 50)
        await wait_settled(client.js)
        assert sorted(await listed(client, 50)) == sorted(run_ids)
        assert await proc.terminate() == 0
        shutil.rmtree(data)
        await proc.start(client)
        assert sorted(await listed(client, 50)) == sorted(run_ids)

    async def test_bucket_recreated_while_running(
        self, nats_server: NatsCluster, client: RunsClient, worker: WorkerProcess
    ) -> None:
        """A bucket deleted and made anew is another stream: the index drops the old runs."""
        await publish_all(client, 20, prefix="old")
        await wait_settled(client.js)
        await listed(client, 20)
        info = await client.js.stream_info("KV_RMOS_RUNS")
        await client.js.delete_stream("KV_RMOS_RUNS")
        await client.js.add_stream(info.config)
        [new] = await publish_all(client, 1, prefix="new")
        await stored(client, new)
        assert await listed(client, 1) == [new]

    async def test_processes_share_one_projection(
        self, nats_server: NatsCluster, client: RunsClient, tmp_path: Path
    ) -> None:
        """Two processes of one data dir: one follows the bucket, the other answers ``list``
        from the same index once it has caught up; the group's one port exports the lag (the
        follower's: the other process has none to measure)."""
        port = free_ports(2)
        env = {**JETSTREAM, "RMOS_PROCESSES": "2", "RMOS_METRICS_PORT": str(port)}
        proc = WorkerProcess(nats_server.url, tmp_path / "data", env=env)
        await proc.start(client)
        run_ids = await publish_all(client, 300)
        await wait_settled(client.js)
        for _ in range(10):  # answered by either process, each time complete
            assert sorted(await listed(client, 300)) == sorted(run_ids)
        samples = await scrape(port)
        assert samples["rmos_projection_lag_messages"] == 0
        assert samples['rmos_events_total{outcome="stored"}'] == 300  # both processes' counts

    async def test_tampered_value_fails_verify(
        self, nats_server: NatsCluster, client: RunsClient, worker: WorkerProcess
    ) -> None:
        """``verify`` reads the bytes the bucket holds now, not what the worker wrote (nor what
        the log says was written)."""
        [run_id] = await publish_all(client, 1)
        run = await stored(client, run_id)
        assert (await client.verify(run_id)).valid
        forged = {**run, "status": "ERROR"}
        await client.js.publish(f"$KV.RMOS_RUNS.{run_id}", encode(forged))
        report = await client.verify(run_id)
        assert not report.valid
        assert [c.name for c in report.checks if not c.ok] == ["content_sha256", "log.artifact"]


@CLUSTER
class TestPlacement:
    """Every stream and bucket is replicated as configured; what cannot be placed is refused."""

    async def test_three_replicas(self, worker: WorkerProcess, client: RunsClient) -> None:
        for name in STREAMS:
            assert (await client.js.stream_info(name)).config.num_replicas == 3, name

    async def test_replicas_changed(
        self, nats_server: NatsCluster, client: RunsClient, tmp_path: Path
    ) -> None:
        """Streams and buckets made with 1 replica get 3 when a worker is started so."""
        env = {**JETSTREAM, "RMOS_STORE_REPLICAS": "1"}
        single = WorkerProcess(nats_server.url, tmp_path / "one", env=env)
        await single.start(client)
        [run_id] = await publish_all(client, 1)
        await stored(client, run_id)
        assert await single.terminate() == 0
        assert (await client.js.stream_info("KV_RMOS_RUNS")).config.num_replicas == 1
        replicated = WorkerProcess(nats_server.url, tmp_path / "three", env=JETSTREAM)
        await replicated.start(client)
        for name in STREAMS:
            assert (await client.js.stream_info(name)).config.num_replicas == 3, name
        assert (await client.get(run_id))["run_id"] == run_id


class TestSingleServer:
    """The jetstream store on a server that is not a cluster (``nats_server`` is one server)."""

    async def test_one_replica_by_default(
        self, nats_server: NatsServer, client: RunsClient, tmp_path: Path
    ) -> None:
        proc = WorkerProcess(nats_server.url, tmp_path / "data", env=JETSTREAM)
        await proc.start(client)
        [run_id] = await publish_all(client, 1)
        await stored(client, run_id)
        assert (await client.js.stream_info("KV_RMOS_RUNS")).config.num_replicas == 1

    async def test_three_replicas_refused(
        self, nats_server: NatsServer, client: RunsClient, tmp_path: Path
    ) -> None:
        """Asked for replicas a single server cannot hold, the worker exits 1 saying why."""
        env = {**JETSTREAM, "RMOS_STORE_REPLICAS": "3"}
        proc = WorkerProcess(nats_server.url, tmp_path / "data", env=env)
        await proc.start()
        assert proc.proc is not None
        assert await asyncio.wait_for(proc.proc.wait(), 30) == 1
        assert "cannot start: JetStream cannot hold the streams with 3 replicas" in proc.log()
        assert "Traceback" not in proc.log()
