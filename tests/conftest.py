"""Fixtures shared by the integration and fault tiers: a real nats-server per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support import WorkerProcess
from worker.client import RunsClient
from worker.nats_server import NatsServer


@pytest.fixture(autouse=True)
async def _reap_workers() -> AsyncIterator[None]:
    """No worker process outlives its test, whatever the test did."""
    yield
    while WorkerProcess.started:
        proc = WorkerProcess.started.pop()
        if proc.proc is not None and proc.proc.returncode is None:
            await proc.kill()


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    """A fresh nats-server with JetStream on a random loopback port, its own store dir."""
    server = NatsServer(tmp_path / "nats")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def client(nats_server: NatsServer) -> AsyncIterator[RunsClient]:
    runs = await RunsClient.connect(nats_server.url)
    try:
        yield runs
    finally:
        await runs.close()


@pytest.fixture
async def worker(
    nats_server: NatsServer, client: RunsClient, tmp_path: Path
) -> AsyncIterator[WorkerProcess]:
    """A ready worker process on the test's server, data under ``tmp_path/data``."""
    proc = WorkerProcess(nats_server.url, tmp_path / "data")
    await proc.start(client)
    try:
        yield proc
    finally:
        if proc.proc is not None and proc.proc.returncode is None:
            await proc.terminate()
