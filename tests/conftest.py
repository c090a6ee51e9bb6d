"""Fixtures shared by the integration and fault tiers: a real nats-server per test.

A test or class marked ``BOTH_STORES`` (``tests.support``) runs twice: against one nats-server
with the files store, and against a fresh 3-node JetStream cluster with the jetstream store.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support import SmallDisk, WorkerProcess
from worker.client import RunsClient
from worker.nats_cluster import NatsCluster
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
def store(request: pytest.FixtureRequest) -> str:
    """The store the test's workers use: ``files`` unless parametrized (``BOTH_STORES``)."""
    return str(getattr(request, "param", "files"))


@pytest.fixture
def store_env(store: str) -> dict[str, str]:
    """The environment that makes a worker use the test's store."""
    return {"RMOS_STORE": store} if store != "files" else {}


@pytest.fixture
async def nats_server(store: str, tmp_path: Path) -> AsyncIterator[NatsServer | NatsCluster]:
    """A fresh nats-server with JetStream on a random loopback port, its own store dir; for the
    jetstream store a fresh 3-node cluster (``url`` lists its nodes)."""
    server: NatsServer | NatsCluster = (
        NatsCluster(tmp_path / "cluster") if store == "jetstream" else NatsServer(tmp_path / "nats")
    )
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
    nats_server: NatsServer, client: RunsClient, tmp_path: Path, store_env: dict[str, str]
) -> AsyncIterator[WorkerProcess]:
    """A ready worker process on the test's server, data under ``tmp_path/data``."""
    proc = WorkerProcess(nats_server.url, tmp_path / "data", env=store_env)
    await proc.start(client)
    try:
        yield proc
    finally:
        if proc.proc is not None and proc.proc.returncode is None:
            await proc.terminate()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A 32 MiB tmpfs at ``tmp_path / "disk"``, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs to fill up needs root")
    disk = SmallDisk(tmp_path / "disk")
    try:
        disk.mount()
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc.stderr.decode(errors='replace').strip()}")
    yield disk
    disk.unmount()
