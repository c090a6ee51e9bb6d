"""A 3-node JetStream cluster loses the leader of the runs bucket mid-stream: nothing lost,
nothing stored twice, the worker carries on by itself, and the dead node catches up."""

from __future__ import annotations

import asyncio
import json
import random
import urllib.request
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import nats.errors
import pytest
from nats.js import JetStreamContext

from contracts.canonical import derive_run_id, sha256_json
from tests.support import WorkerProcess, dead_letters, event, eventually
from worker.client import RunsApiError, RunsClient
from worker.core.ingest import content_sha256
from worker.nats_cluster import NatsCluster

pytestmark = pytest.mark.integration
T = TypeVar("T")

EVENTS = 5000
CHUNK = 250  # publishes in flight at once
RUNS_STREAM = "KV_RMOS_RUNS"
EVENTS_STREAM = "RMOS_RUN_EVENTS"
EVENTS_CONSUMER = "rmos-worker-events"
# What a JetStream call may raise while a stream has no leader or the client is reconnecting.
CLUSTER_ERRORS = (nats.errors.Error, TimeoutError)


async def retrying(call: Callable[[], Awaitable[T]], timeout: float = 30.0) -> T:
    """``call()`` until it succeeds, through elections and reconnects; bounded by ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return await call()
        except CLUSTER_ERRORS:
            if loop.time() > deadline:
                raise
        await asyncio.sleep(0.2)


async def publish_all(
    client: RunsClient, bodies: list[dict[str, Any]], progress: Callable[[int], None]
) -> None:
    """Chunks published concurrently; one that fails is published again with the same
    ``Nats-Msg-Id`` (JetStream keeps one copy). ``progress`` gets the count after each chunk."""
    for start in range(0, len(bodies), CHUNK):
        chunk = bodies[start : start + CHUNK]
        await asyncio.gather(
            *(retrying(partial(client.publish_event, b), timeout=60) for b in chunk)
        )
        progress(start + len(chunk))


async def leader_of(js: JetStreamContext, stream: str) -> str:
    async def probe() -> str | None:
        try:
            info = await js.stream_info(stream)
        except CLUSTER_ERRORS:
            return None
        return info.cluster.leader if info.cluster is not None else None

    return await eventually(probe, timeout=30)


async def wait_settled_cluster(js: JetStreamContext, timeout: float) -> None:
    """Until every event in the stream is settled (acked or terminated) by the worker; JetStream
    calls that fail during an election are polled again."""

    async def probe() -> bool | None:
        try:
            stream = await js.stream_info(EVENTS_STREAM)
            info = await js.consumer_info(EVENTS_STREAM, EVENTS_CONSUMER)
        except CLUSTER_ERRORS:
            return None
        floor = info.ack_floor.stream_seq if info.ack_floor else 0
        settled = not info.num_pending and not info.num_ack_pending
        return True if settled and floor == stream.state.last_seq else None

    await eventually(probe, timeout)


async def bucket_artifacts(js: JetStreamContext, last_seq: int) -> dict[str, dict[str, Any]]:
    """Every message of the runs bucket's stream, by sequence: its key and artifact. A key met
    twice fails (the bucket keeps one value a key, but each write takes a sequence)."""
    found: dict[str, dict[str, Any]] = {}
    for start in range(1, last_seq + 1, CHUNK):
        seqs = range(start, min(start + CHUNK, last_seq + 1))
        msgs = await asyncio.gather(*(js.get_msg(RUNS_STREAM, seq) for seq in seqs))
        for msg in msgs:
            key = (msg.subject or "").removeprefix("$KV.RMOS_RUNS.")
            assert key not in found, f"{key} written twice"
            found[key] = json.loads(msg.data or b"null")
    return found


def node_stream_state(monitor_port: int, stream: str) -> dict[str, Any] | None:
    """The stream's state as one node sees it (its /jsz monitoring endpoint)."""
    url = f"http://127.0.0.1:{monitor_port}/jsz?accounts=true&streams=true"
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            jsz = json.loads(reply.read())
    except OSError:
        return None
    for account in jsz.get("account_details") or []:
        for detail in account.get("stream_detail") or []:
            if detail.get("name") == stream:
                state: dict[str, Any] = detail["state"]
                return state
    return None


async def listed_runs(client: RunsClient) -> list[str] | None:
    """Every run id ``list`` shows, page by page; None while the API cannot answer."""
    ids: list[str] = []
    cursor: str | None = None
    try:
        while True:
            page = await client.list_page(limit=500, cursor=cursor)
            ids += [item.run_id for item in page.items]
            cursor = page.next_cursor
            if cursor is None:
                return ids
    except (RunsApiError, *CLUSTER_ERRORS):
        return None


async def kill_leader_mid_stream(
    cluster: NatsCluster, client: RunsClient, bodies: list[dict[str, Any]]
) -> str:
    """Publish every event; once a third is published and the worker has stored some, SIGKILL
    the leader of the runs bucket (publishing goes on meanwhile). Returns the node's name."""
    third = asyncio.Event()

    def progress(published: int) -> None:
        if published >= len(bodies) // 3:
            third.set()

    async def stored() -> int | None:
        info = await retrying(lambda: client.js.stream_info(RUNS_STREAM))
        return info.state.messages or None

    publishing = asyncio.create_task(publish_all(client, bodies, progress))
    try:
        await asyncio.wait_for(third.wait(), 60)
        await eventually(stored, timeout=30)  # the worker is writing to the leader too
        leader = await leader_of(client.js, RUNS_STREAM)
        stored_at_kill = await stored()
        await cluster.kill(cluster.index_of(leader))
        assert stored_at_kill is not None
        assert stored_at_kill < len(bodies), "the kill came too late to test anything"
        await asyncio.wait_for(publishing, 120)
    finally:
        publishing.cancel()
    events_stream = await retrying(lambda: client.js.stream_info(EVENTS_STREAM))
    assert events_stream.state.messages == len(bodies), "a publish retried was not deduplicated"
    return leader


async def assert_stored_once(client: RunsClient, expected: dict[str, dict[str, Any]]) -> None:
    """Each expected run in the bucket, written once, whole, its event's; ``get`` agrees."""
    state = (await retrying(lambda: client.js.stream_info(RUNS_STREAM))).state
    assert state.messages == len(expected)
    assert state.last_seq == len(expected), "a run was written more than once"
    artifacts = await retrying(lambda: bucket_artifacts(client.js, len(expected)))
    assert set(artifacts) == set(expected)
    for run_id, artifact in artifacts.items():
        assert artifact["run_id"] == run_id
        assert artifact["revision"] == 1
        assert artifact["content_sha256"] == content_sha256(artifact)
        assert artifact["hashes"]["event_sha256"] == sha256_json(expected[run_id])
    for run_id in random.Random(0).sample(sorted(expected), 100):
        assert await retrying(partial(client.get, run_id)) == artifacts[run_id]


async def caught_up(
    cluster: NatsCluster, client: RunsClient, name: str, messages: int
) -> bool | None:
    """True once node ``name`` holds every message of the runs stream, by its own account,
    and the stream's leader counts it a current replica (or it leads again)."""
    port = cluster.monitor_ports[cluster.index_of(name)]
    seen = await asyncio.to_thread(node_stream_state, port, RUNS_STREAM)
    if seen is None or seen["messages"] != messages or seen["last_seq"] != messages:
        return None
    try:
        info = await client.js.stream_info(RUNS_STREAM)
    except CLUSTER_ERRORS:
        return None
    if info.cluster is None:
        return None
    if info.cluster.leader == name:
        return True
    peer = [p for p in info.cluster.replicas or [] if p.name == name]
    return True if peer and peer[0].current and not peer[0].lag else None


@pytest.mark.timeout(300)
async def test_leader_killed_mid_stream(tmp_path: Path) -> None:
    """SIGKILL of the runs bucket's leader while 5,000 events stream in: each stored once, the
    worker carries on unaided, and the node catches up once restarted."""
    cluster = NatsCluster(tmp_path / "cluster")
    await cluster.start()
    client = await RunsClient.connect(cluster.url)
    try:
        # ack_wait 5 s: an ack lost with the killed node comes back in seconds, not 30
        env = {"RMOS_STORE": "jetstream", "RMOS_ACK_WAIT_S": "5"}
        worker = WorkerProcess(cluster.url, tmp_path / "data", env=env)
        await worker.start(client)
        assert worker.proc is not None
        bodies = [event(f"evt-{i}") for i in range(EVENTS)]
        expected = {derive_run_id("engine-a", str(b["event_id"])): b for b in bodies}

        killed = await kill_leader_mid_stream(cluster, client, bodies)
        await wait_settled_cluster(client.js, timeout=120)
        assert worker.proc.returncode is None, f"the worker exited:\n{worker.log()}"
        await assert_stored_once(client, expected)
        assert await retrying(lambda: dead_letters(client.js)) == []
        assert worker.proc.returncode is None, f"the worker exited:\n{worker.log()}"

        await cluster.start_node(cluster.index_of(killed))
        await eventually(partial(caught_up, cluster, client, killed, EVENTS), timeout=60)

        async def all_listed() -> bool | None:
            ids = await listed_runs(client)
            return True if ids is not None and sorted(ids) == sorted(expected) else None

        await eventually(all_listed, timeout=60)
        assert worker.proc.returncode is None, f"the worker exited:\n{worker.log()}"
        assert await worker.terminate() == 0
    finally:
        await client.close()
        await cluster.stop()


@pytest.mark.timeout(300)
async def test_quorum_lost_longer_than_the_budget(tmp_path: Path) -> None:
    """Two of three nodes down for 15 s, far longer than a 3-delivery budget of 0.2-0.4 s naks:
    nothing leads the store, the worker holds what it has and waits; once the nodes are back
    every event is stored once and none is dead-lettered (issue 13)."""
    cluster = NatsCluster(tmp_path / "cluster")
    await cluster.start()
    client = await RunsClient.connect(cluster.url)
    try:
        bodies = [event(f"quorum-{i}") for i in range(2000)]
        expected = {derive_run_id("engine-a", str(b["event_id"])): b for b in bodies}
        env = {
            "RMOS_STORE": "jetstream",
            "RMOS_MAX_DELIVER": "3",
            "RMOS_NAK_BASE_DELAY_S": "0.2",
            "RMOS_NAK_MAX_DELAY_S": "0.4",
            "RMOS_STORE_RETRY_MAX_S": "1",
        }
        worker = WorkerProcess(cluster.url, tmp_path / "data", env=env)
        await worker.start(client)  # declares the streams and the bucket,
        assert await worker.terminate() == 0
        await publish_all(client, bodies, lambda _: None)  # then a backlog for the next start
        await worker.start(client)
        assert worker.proc is not None

        async def some_stored() -> int | None:
            info = await retrying(lambda: client.js.stream_info(RUNS_STREAM))
            return info.state.messages or None

        stored_at_kill = await eventually(some_stored, timeout=30)
        await asyncio.gather(cluster.kill(1), cluster.kill(2))
        assert stored_at_kill < len(bodies), "the kill came too late to test anything"
        await asyncio.sleep(15)
        assert worker.proc.returncode is None, f"the worker exited:\n{worker.log()}"
        await asyncio.gather(cluster.start_node(1), cluster.start_node(2))

        await wait_settled_cluster(client.js, timeout=120)
        await assert_stored_once(client, expected)
        assert await retrying(lambda: dead_letters(client.js)) == []
        assert "store outage:" in worker.log_path.read_text()
        assert worker.log_path.read_text().rstrip().count("store works again") >= 1
        assert await worker.terminate() == 0
    finally:
        await client.close()
        await cluster.stop()
