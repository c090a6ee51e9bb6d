"""``/readyz`` follows NATS: false while the server is down, true again once it is back on the
same port and store, without a restart of the worker; ``/healthz`` stays true throughout."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from contracts.canonical import derive_run_id
from tests.integration.test_metrics import free_ports, probe, ready
from tests.support import WorkerProcess, event, eventually, stored, wait_settled
from worker.client import RunsClient
from worker.nats_server import NatsServer

pytestmark = pytest.mark.integration


async def reasons(port: int) -> list[str] | None:
    """The reasons of a 503, or None while ready."""
    status, body = await probe(port)
    if status == 200:
        return None
    assert status == 503
    assert body["ready"] is False
    found = body["reasons"]
    assert isinstance(found, list)
    return [str(r) for r in found]


@pytest.mark.parametrize("how", ["kill", "stop"])
async def test_readiness_follows_nats(
    nats_server: NatsServer, client: RunsClient, tmp_path: Path, how: str
) -> None:
    port = free_ports(1)
    proc = WorkerProcess(nats_server.url, tmp_path / "data", env={"RMOS_METRICS_PORT": str(port)})
    await proc.start(client)
    await ready(port)

    await (nats_server.kill() if how == "kill" else nats_server.stop())

    async def not_ready() -> list[str] | None:
        return await reasons(port)

    why = await eventually(not_ready, timeout=10)
    assert any(r.startswith("nats: ") for r in why), why
    assert await probe(port, "/healthz") == (200, {"alive": True})  # alive without NATS
    await asyncio.sleep(2)  # a few reconnect attempts: still not ready, still alive
    assert any(r.startswith("nats: ") for r in await reasons(port) or []), "ready without NATS"
    assert await probe(port, "/healthz") == (200, {"alive": True})

    await nats_server.start()  # same port, same store
    await ready(port)
    assert proc.proc is not None
    assert proc.proc.returncode is None, "the worker kept running"

    async def reconnected() -> bool | None:
        return True if client.nc.is_connected else None

    await eventually(reconnected, timeout=30)
    await client.publish_event(event("after-restart"))  # and it works again
    await stored(client, derive_run_id("engine-a", "after-restart"), timeout=30)
    await wait_settled(client.js)
    assert await proc.terminate() == 0


async def test_not_ready_until_started(tmp_path: Path) -> None:
    """Before NATS answers at all, the probes are up: alive, not ready, saying why."""
    port = free_ports(2)
    nowhere = f"nats://127.0.0.1:{port + 1}"
    env = {"RMOS_METRICS_PORT": str(port), "RMOS_CONNECT_TIMEOUT_S": "30"}
    proc = WorkerProcess(nowhere, tmp_path / "data", env=env)
    await proc.start()

    async def answering() -> list[str] | None:
        try:
            return await reasons(port)
        except OSError:
            return None

    why = await eventually(answering, timeout=20)
    assert why == ["startup: not finished", "nats: not connected"]
    assert await probe(port, "/healthz") == (200, {"alive": True})
    assert await proc.terminate() == 0  # SIGTERM while it waits for NATS: a clean stop
