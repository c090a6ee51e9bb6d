"""``rmos-runs worker --processes N``: sibling workers on one stream and one data dir."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path

from contracts.canonical import derive_run_id
from tests.support import (
    WorkerProcess,
    assert_audited,
    dead_letters,
    event,
    eventually,
    indexed_runs,
    stored_artifacts,
    wait_settled,
)
from worker.client import RunsClient
from worker.nats_server import NatsServer

STOPPED = re.compile(r"events consumer stopped: (\d+) stored, (\d+) duplicates")


async def group(nats_server: NatsServer, client: RunsClient, data: Path) -> WorkerProcess:
    """A ready group of two: the first process and one sibling, both saying they are ready."""
    proc = WorkerProcess(nats_server.url, data, env={"RMOS_PROCESSES": "2"})
    await proc.start(client)

    async def both_ready() -> bool | None:
        return True if proc.ready_lines() == 2 else None

    await eventually(both_ready)
    return proc


def sibling_pid(proc: WorkerProcess) -> int:
    found = re.search(r"started 1 more worker processes: \[(\d+)\]", proc.log())
    assert found, proc.log()
    return int(found.group(1))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class TestProcessGroup:
    async def test_siblings_share_the_stream(
        self, nats_server: NatsServer, client: RunsClient, tmp_path: Path
    ) -> None:
        """Both processes take batches; every event is stored once, indexed, none dead-lettered;
        SIGTERM to the first stops both cleanly."""
        data = tmp_path / "data"
        proc = await group(nats_server, client, data)
        bodies = [event(f"p{i:04d}") for i in range(2000)]
        await asyncio.gather(*(client.publish_event(body) for body in bodies))
        await wait_settled(client.js)
        expected = {derive_run_id("engine-a", body["event_id"]) for body in bodies}
        assert set(stored_artifacts(data)) == expected
        assert indexed_runs(data) == expected
        assert await dead_letters(client.js) == []
        assert await proc.terminate() == 0
        stopped = [(int(s), int(d)) for s, d in STOPPED.findall(proc.log())]
        assert len(stopped) == 2, proc.log()
        assert sum(s for s, _ in stopped) == 2000
        assert all(s > 0 for s, _ in stopped), f"one process took every batch: {stopped}"
        assert [p for p in (data / "tmp").iterdir() if p.is_dir()] == []  # each removed its own
        await assert_audited(nats_server.url, data, runs=2000)  # both appended to one log

    async def test_a_sibling_that_dies_stops_the_group(
        self, nats_server: NatsServer, client: RunsClient, tmp_path: Path
    ) -> None:
        """kill -9 of a sibling: the first process stops too and exits 1, for a restart."""
        proc = await group(nats_server, client, tmp_path / "data")
        os.kill(sibling_pid(proc), signal.SIGKILL)
        assert proc.proc is not None
        assert await asyncio.wait_for(proc.proc.wait(), 30) == 1
        assert "exited with -9; stopping the group" in proc.log()

    async def test_siblings_die_with_the_first(
        self, nats_server: NatsServer, client: RunsClient, tmp_path: Path
    ) -> None:
        """kill -9 of the first process: no sibling is left holding the data dir."""
        proc = await group(nats_server, client, tmp_path / "data")
        pid = sibling_pid(proc)
        await proc.kill()

        async def gone() -> bool | None:
            return True if not alive(pid) else None

        await eventually(gone)
