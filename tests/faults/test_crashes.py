"""Crashes of the worker and of nats-server: nothing lost, nothing torn, nothing stored twice."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest

from contracts.canonical import derive_run_id, sha256_json
from tests.faults.crashing_worker import CRASHED
from tests.support import (
    ROOT,
    WorkerProcess,
    assert_audited,
    dead_letters,
    event,
    eventually,
    indexed_runs,
    stored_artifacts,
    temp_files,
    wait_settled,
)
from worker.client import RunsClient
from worker.core.ingest import content_sha256
from worker.nats_server import NatsServer
from worker.streams import ensure_streams

pytestmark = pytest.mark.integration
# Messages a dead worker held come back after ack_wait: keep it short so the tests stay quick.
FAST_REDELIVERY = {"RMOS_ACK_WAIT_S": "2"}


def events(n: int, prefix: str = "evt") -> list[dict[str, object]]:
    return [event(f"{prefix}-{i:05d}", notes="x" * 300) for i in range(n)]


async def publish_all(client: RunsClient, bodies: list[dict[str, object]]) -> None:
    await ensure_streams(client.js, client.subjects)  # as the worker declares them
    for start in range(0, len(bodies), 200):
        await asyncio.gather(*(client.publish_event(b) for b in bodies[start : start + 200]))


def assert_whole(data_dir: Path, expected: dict[str, str]) -> set[str]:
    """Every stored run parses, matches its id and content hash, holds the expected event."""
    seen = set()
    for run_id, data in stored_artifacts(data_dir).items():
        artifact = json.loads(data)
        assert artifact["run_id"] == run_id
        assert artifact["content_sha256"] == content_sha256(artifact)
        assert artifact["hashes"]["event_sha256"] == expected[run_id]
        assert artifact["revision"] == 1
        seen.add(run_id)
    return seen


def expected_hashes(bodies: list[dict[str, object]]) -> dict[str, str]:
    return {derive_run_id(str(b["source"]), str(b["event_id"])): sha256_json(b) for b in bodies}


async def count_files(data_dir: Path, at_least: int) -> None:
    async def probe() -> bool | None:
        return True if len(stored_artifacts(data_dir)) >= at_least else None

    await eventually(probe, timeout=60)


async def finish(
    nats_server: NatsServer, client: RunsClient, data: Path, expected: dict[str, str]
) -> None:
    """Restart a normal worker on the same data dir and check the end state."""
    proc = WorkerProcess(nats_server.url, data, env=FAST_REDELIVERY)
    await proc.start(client)
    await count_files(data, len(expected))
    await wait_settled(client.js, timeout=60)
    assert assert_whole(data, expected) == set(expected)
    assert indexed_runs(data) == set(expected)
    assert temp_files(data) == []
    assert await dead_letters(client.js) == []
    assert await proc.terminate() == 0
    await assert_audited(nats_server.url, data, runs=len(expected))


class TestBatchCommitCrash:
    """A crash at each step of a group commit leaves each run absent (and redelivered) or whole."""

    @pytest.mark.parametrize(
        ("step", "placed"),
        [
            ("before_flush", False),
            ("after_flush", False),
            ("before_index", True),
            ("before_second_flush", True),
            ("before_ack", True),
        ],
    )
    async def test_crash_at_step(
        self,
        nats_server: NatsServer,
        client: RunsClient,
        tmp_path: Path,
        step: str,
        placed: bool,
    ) -> None:
        """The crashed commit is redone on restart: every event stored exactly once."""
        bodies = events(300)
        await publish_all(client, bodies)
        data = tmp_path / "data"
        crashing = WorkerProcess(
            nats_server.url,
            data,
            env={"CRASH_AT": step, **FAST_REDELIVERY},
            module="tests.faults.crashing_worker",
            cwd=ROOT,
        )
        await crashing.start()
        assert crashing.proc is not None
        assert await asyncio.wait_for(crashing.proc.wait(), 60) == CRASHED, crashing.log()
        assert f"crash injected at {step}" in crashing.log()
        expected = expected_hashes(bodies)
        on_disk = assert_whole(data, expected)
        # the whole first batch, whatever its size, or none of it
        assert len(on_disk) >= 1 if placed else len(on_disk) == 0
        await finish(nats_server, client, data, expected)


class TestKill:
    """SIGKILL of either process in the middle of a stream of events."""

    async def test_worker_killed_mid_stream(
        self, nats_server: NatsServer, client: RunsClient, tmp_path: Path
    ) -> None:
        """kill -9 of the worker mid-stream, then restart: every event stored exactly once."""
        bodies = events(3000)
        await publish_all(client, bodies)
        data = tmp_path / "data"
        proc = WorkerProcess(nats_server.url, data, env=FAST_REDELIVERY)
        await proc.start(client)
        await count_files(data, 300)
        await proc.kill()
        stored_at_kill = len(assert_whole(data, expected_hashes(bodies)))
        assert stored_at_kill < len(bodies), "the kill came too late to test anything"
        await finish(nats_server, client, data, expected_hashes(bodies))

    async def test_nats_server_killed_mid_stream(
        self, nats_server: NatsServer, client: RunsClient, tmp_path: Path
    ) -> None:
        """kill -9 of nats-server mid-stream, restart on the same store: nothing lost."""
        first, second = events(1500, "first"), events(1500, "second")
        await publish_all(client, first)
        data = tmp_path / "data"
        proc = WorkerProcess(nats_server.url, data, env=FAST_REDELIVERY)
        await proc.start(client)
        await count_files(data, 200)
        await nats_server.kill()
        await asyncio.sleep(0.5)
        await nats_server.start()

        async def reconnected() -> bool | None:
            return True if client.nc.is_connected else None

        await eventually(reconnected, timeout=30)
        await publish_all(client, second)
        expected = expected_hashes(first + second)
        await count_files(data, len(expected))
        await wait_settled(client.js, timeout=60)
        assert assert_whole(data, expected) == set(expected)
        assert await dead_letters(client.js) == []
        assert proc.proc is not None
        assert proc.proc.returncode is None, "the worker kept running through the outage"
        assert await proc.terminate() == 0


class TestPoisonThatKills:
    """An event that kills the worker on every delivery still ends in the DLQ."""

    async def test_max_deliveries_from_advisory(
        self, nats_server: NatsServer, client: RunsClient, tmp_path: Path
    ) -> None:
        """JetStream's max-deliveries advisory is turned into a MAX_DELIVERIES dead letter."""
        body = event("evt-killer")
        await publish_all(client, [body])
        data = tmp_path / "data"
        env = {**FAST_REDELIVERY, "RMOS_MAX_DELIVER": "2"}
        for _ in range(2):  # each delivery kills the worker before anything is durable
            crashing = WorkerProcess(
                nats_server.url,
                data,
                env={**env, "CRASH_AT": "before_flush"},
                module="tests.faults.crashing_worker",
                cwd=ROOT,
            )
            await crashing.start()
            assert crashing.proc is not None
            assert await asyncio.wait_for(crashing.proc.wait(), 60) == CRASHED, crashing.log()
        proc = WorkerProcess(nats_server.url, data, env=env)
        await proc.start(client)

        async def letters() -> list[tuple[dict[str, object], dict[str, str]]] | None:
            return await dead_letters(client.js) or None

        [(letter, headers)] = await eventually(letters, timeout=30)
        assert letter["code"] == "MAX_DELIVERIES"
        assert letter["stream_seq"] == 1
        assert letter["deliveries"] == 2
        assert letter["payload_sha256"] == hashlib.sha256(json.dumps(body).encode()).hexdigest()
        assert headers["Nats-Msg-Id"] == "dlq:RMOS_RUN_EVENTS:1"
        assert stored_artifacts(data) == {}
        assert await proc.terminate() == 0
