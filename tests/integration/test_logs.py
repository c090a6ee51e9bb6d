"""One log format for every line a worker writes, FastStream's included (issue 10, item 5)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from contracts.canonical import derive_run_id
from tests.support import WorkerProcess, dead_letters, event, eventually, stored
from worker.client import RunsClient
from worker.nats_server import NatsServer

pytestmark = pytest.mark.integration
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.]+\[\d+\]: ")


async def a_day_of_work(
    nats_server: NatsServer, client: RunsClient, data_dir: Path, log_format: str
) -> list[str]:
    """A worker that stores a run, dead-letters a bad event and stops: its output's lines."""
    worker = WorkerProcess(nats_server.url, data_dir, env={"RMOS_LOG_FORMAT": log_format})
    await worker.start(client)
    await client.publish_event(event("logged"))
    await stored(client, derive_run_id("engine-a", "logged"))
    await client.publish_raw("rmos.runs.v1.events.engine-a", b"{not json", msg_id="bad-1")

    async def one_dead_letter() -> bool | None:
        return True if len(await dead_letters(client.js)) == 1 else None

    await eventually(one_dead_letter)
    assert await worker.terminate() == 0
    return worker.log_path.read_text().splitlines()


async def test_text(nats_server: NatsServer, client: RunsClient, tmp_path: Path) -> None:
    lines = await a_day_of_work(nats_server, client, tmp_path / "data", "text")
    assert not [line for line in lines if "\x1b[" in line]  # no colour codes in a file
    assert not [line for line in lines if "is being executed" in line]
    assert [line for line in lines if not TEXT_LINE.match(line)] == []
    assert any("rmos-runs worker ready" in line for line in lines)
    assert any("dead-lettered seq" in line and "INVALID_JSON" in line for line in lines)


async def test_json(nats_server: NatsServer, client: RunsClient, tmp_path: Path) -> None:
    lines = await a_day_of_work(nats_server, client, tmp_path / "data", "json")
    records = [json.loads(line) for line in lines]  # every line one JSON object
    for record in records:
        assert {"ts", "level", "logger", "pid", "message"} <= record.keys(), record
    assert any(r["message"].startswith("rmos-runs worker ready") for r in records)
    [dead] = [r for r in records if r["message"].startswith("dead-lettered seq")]
    assert dead["code"] == "INVALID_JSON"
    assert isinstance(dead["stream_seq"], int)
    assert not [r for r in records if "is being executed" in r["message"]]
