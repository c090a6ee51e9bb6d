"""The store fails as a whole for longer than the delivery budget: ingest pauses, nothing is
dead-lettered, nothing is lost or stored twice, and it resumes by itself (issue 13).

Two outages, one a store: the files store's data dir on a small tmpfs of its own, filled to the
last byte (the nats-server keeps its store on the ordinary disk); the jetstream store's runs
bucket at its byte quota (JetStream refuses every write: "maximum bytes exceeded"). The
delivery budget is made short (3 deliveries, naks of 0.2-0.4 s, ``ack_wait`` 3 s) and the store
stays down far longer, so that without the pause every event in hand would be a
``MAX_DELIVERIES`` dead letter within seconds, and ``in_progress`` must really keep the held
messages from coming back. One run keeps the default settings, for longer than their budget.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from contracts.canonical import derive_run_id
from tests.integration.test_lifecycle import blocked_run, run_at, send_patch
from tests.integration.test_metrics import free_ports, probe, ready, scrape
from tests.support import (
    SmallDisk,
    WorkerProcess,
    dead_letters,
    event,
    eventually,
    run_count,
    temp_files,
    wait_settled,
)
from worker.client import RunsApiError, RunsClient
from worker.nats_server import NatsServer

pytestmark = pytest.mark.integration

SHORT_BUDGET = {
    "RMOS_MAX_DELIVER": "3",
    "RMOS_NAK_BASE_DELAY_S": "0.2",
    "RMOS_NAK_MAX_DELAY_S": "0.4",
    "RMOS_ACK_WAIT_S": "3",
    "RMOS_STORE_RETRY_MAX_S": "1",
}
DOWN_FOR_S = 15.0  # 5 × ack_wait, and ~25 × the nak budget
DEFAULTS_DOWN_FOR_S = 75.0  # the default budget: 8 deliveries, naks 0.5 s doubling to 30 s: ~62 s
OUTAGE_LINE = "store outage:"
RESUMED_LINE = "store works again"
RUNS_STREAM = "KV_RMOS_RUNS"


@dataclass
class Outage:
    """How one store is brought down and up again, and where its worker keeps its data."""

    store: str
    data_dir: Path
    log_dir: Path
    cause: str  # in the outage's log line and in the API's error
    disk: SmallDisk | None = None
    client: RunsClient | None = None

    async def begin(self) -> None:
        if self.disk is not None:
            self.disk.fill()
            return
        assert self.client is not None
        info = await self.client.js.stream_info(RUNS_STREAM)
        info.config.max_bytes = max(info.state.bytes, 1)  # not one byte more
        await self.client.js.update_stream(info.config)

    async def end(self) -> None:
        if self.disk is not None:
            self.disk.free()
            return
        assert self.client is not None
        info = await self.client.js.stream_info(RUNS_STREAM)
        info.config.max_bytes = -1
        await self.client.js.update_stream(info.config)

    async def worker(
        self, url: str, client: RunsClient, settings: dict[str, str]
    ) -> tuple[WorkerProcess, int]:
        """A ready worker on this store with a metrics port (returned with it)."""
        port = free_ports(1)
        env = {**settings, "RMOS_METRICS_PORT": str(port), "RMOS_STORE": self.store}
        worker = WorkerProcess(url, self.data_dir, env=env)
        worker.log_path = self.log_dir / f"worker-{port}.log"  # not on a disk that fills up
        await worker.start(client)
        if self.store == "jetstream":  # the bucket's quota cannot be below what it holds
            await client.create(event("before-outage"))
        return worker, port


@pytest.fixture(params=["files", "jetstream"])
async def outage(
    request: pytest.FixtureRequest, client: RunsClient, tmp_path: Path
) -> AsyncIterator[Outage]:
    if request.param == "files":
        disk: SmallDisk = request.getfixturevalue("small_disk")
        yield Outage("files", disk.path / "data", tmp_path, "No space left on device", disk=disk)
    else:
        yield Outage(
            "jetstream", tmp_path / "data", tmp_path, "maximum bytes exceeded", client=client
        )


async def outage_gauge(port: int) -> float:
    return (await scrape(port))["rmos_store_outage"]


async def outage_begins(port: int) -> None:
    async def probe() -> bool | None:
        return True if await outage_gauge(port) == 1 else None

    await eventually(probe, timeout=10)


def outage_lines(worker: WorkerProcess) -> tuple[int, int]:
    log = worker.log_path.read_text()
    return log.count(OUTAGE_LINE), log.count(RESUMED_LINE)


async def check_events_wait_out(
    outage: Outage,
    nats_server: NatsServer,
    client: RunsClient,
    settings: dict[str, str],
    down_for: float,
) -> None:
    worker, port = await outage.worker(nats_server.url, client, settings)
    before = await run_count(client, outage.data_dir)
    assert await outage_gauge(port) == 0
    await outage.begin()
    bodies = [event(f"held-{i}") for i in range(300)]
    await asyncio.gather(*(client.publish_event(b) for b in bodies))
    await outage_begins(port)

    with pytest.raises(RunsApiError) as refused:  # an API write answers at once, retryable
        await client.create(event("api-during-outage"))
    assert refused.value.code == "UNAVAILABLE"
    assert "store down" in refused.value.message
    assert outage.cause in refused.value.message
    assert refused.value.reply["error"]["retryable"] is True

    await asyncio.sleep(down_for)
    assert await run_count(client, outage.data_dir) == before
    assert await dead_letters(client.js) == []
    held = await client.js.consumer_info("RMOS_RUN_EVENTS", "rmos-worker-events")
    assert held.num_redelivered == 0  # kept alive: not one came back

    await outage.end()
    await wait_settled(client.js, timeout=60)
    for body in bodies:
        assert (await client.get(derive_run_id("engine-a", body["event_id"])))["revision"] == 1
    assert await run_count(client, outage.data_dir) == before + len(bodies)  # each once
    assert await dead_letters(client.js) == []
    assert temp_files(outage.data_dir) == []
    assert await outage_gauge(port) == 0
    assert outage_lines(worker) == (1, 1), worker.log()
    assert outage.cause in worker.log_path.read_text()
    await client.create(event("api-after-outage"))  # API writes work again
    assert await worker.terminate() == 0


async def test_events_wait_out_the_outage(
    outage: Outage, nats_server: NatsServer, client: RunsClient
) -> None:
    await check_events_wait_out(outage, nats_server, client, SHORT_BUDGET, DOWN_FOR_S)


@pytest.mark.timeout(300)
async def test_with_default_settings(
    nats_server: NatsServer, client: RunsClient, small_disk: SmallDisk, tmp_path: Path
) -> None:
    """The default budget (8 deliveries, ~62 s of naks, ack_wait 30 s), a disk full for 75 s."""
    outage = Outage("files", small_disk.path / "data", tmp_path, "No space left", disk=small_disk)
    await check_events_wait_out(outage, nats_server, client, {}, DEFAULTS_DOWN_FOR_S)


async def test_a_patch_waits_out_the_outage(
    outage: Outage, nats_server: NatsServer, client: RunsClient
) -> None:
    worker, port = await outage.worker(nats_server.url, client, SHORT_BUDGET)
    run = await blocked_run(client)
    assert run["explanation_status"] == "PENDING"
    await outage.begin()
    await send_patch(client, run["run_id"], run["explanation_request_id"])
    await outage_begins(port)
    await asyncio.sleep(DOWN_FOR_S)
    assert (await client.get(run["run_id"]))["explanation_status"] == "PENDING"
    assert await dead_letters(client.js) == []

    await outage.end()
    ready = await run_at(client, run["run_id"], explanation_status="READY")
    assert ready["revision"] == 2
    assert [h.revision for h in (await client.history(run["run_id"])).revisions] == [1, 2]
    assert await dead_letters(client.js) == []
    assert temp_files(outage.data_dir) == []
    info = await client.js.consumer_info("RMOS_EXPLAIN", "rmos-worker-patches")
    assert (info.num_ack_pending, info.num_redelivered) == (0, 0)
    assert outage_lines(worker) == (1, 1), worker.log()
    assert await worker.terminate() == 0


async def test_stop_during_outage_hands_events_back(
    outage: Outage, nats_server: NatsServer, client: RunsClient
) -> None:
    """SIGTERM while the store is down: a clean exit that spends no delivery on a dead letter;
    the next worker, once the store works, stores every event once."""
    worker, _ = await outage.worker(nats_server.url, client, SHORT_BUDGET)
    before = await run_count(client, outage.data_dir)
    await outage.begin()
    bodies = [event(f"stop-{i}") for i in range(50)]
    await asyncio.gather(*(client.publish_event(b) for b in bodies))
    await asyncio.sleep(2)
    assert await worker.terminate() == 0
    assert "events handed back" in worker.log_path.read_text()
    await outage.end()
    fresh, _ = await outage.worker(nats_server.url, client, SHORT_BUDGET)
    await wait_settled(client.js, timeout=60)
    assert await run_count(client, outage.data_dir) == before + len(bodies)
    assert await dead_letters(client.js) == []
    assert await fresh.terminate() == 0


async def test_readyz_reports_the_outage(
    outage: Outage, nats_server: NatsServer, client: RunsClient
) -> None:
    """``/readyz`` is 503 with the store's cause while it is down (``/healthz`` stays 200), and
    the held events show as ack-pending; ready again once it works."""
    worker, port = await outage.worker(nats_server.url, client, SHORT_BUDGET)
    await ready(port)
    await outage.begin()
    await asyncio.gather(*(client.publish_event(event(f"probe-{i}")) for i in range(50)))
    await outage_begins(port)
    status, body = await probe(port)
    assert status == 503
    reasons = body["reasons"]
    assert isinstance(reasons, list)
    [down] = [r for r in reasons if r.startswith("store: down (")]
    assert outage.cause in down
    assert await probe(port, "/healthz") == (200, {"alive": True})

    async def held() -> float | None:
        found = (await scrape(port))["rmos_events_ack_pending"]
        return found if found > 0 else None

    assert await eventually(held, timeout=15) <= 50

    await outage.end()
    await ready(port)
    await wait_settled(client.js, timeout=60)
    assert await worker.terminate() == 0
