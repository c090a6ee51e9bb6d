"""The fixtures of the ``rmos_runs`` pytest plugin (``worker.pytest_plugin`` registers them).

Each test gets its own:

- ``rmos_nats_server``: a nats-server with JetStream on a random loopback port, its store in the
  test's ``tmp_path`` (``.url``); stopped afterwards;
- ``rmos_worker``: ``rmos-runs worker`` on it as a child process, its data dir in ``tmp_path``
  (``.data_dir``, ``.log()``); ready (answering the API) when the test gets it, stopped with
  SIGTERM afterwards, killed and reaped if it does not stop;
- ``rmos_client``: a connected ``RunsClient`` (``publish_event``, ``get``, ``list_page``...);
- ``rmos_event``: a factory of valid run events, ``rmos_event(status="BLOCKED", ...)``;
- ``rmos_explainer``: ``await rmos_explainer(explain, **options)`` runs an explainer of the SDK
  (``worker.explainer.Explainer``) in the test's process against the test's server: what an
  explainer team tests its function with; stopped afterwards.

``worker.testing`` has the waits: ``wait_for_run`` and ``wait_for_explanation``, with
``run_id_of(event)``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from worker.client import RunsClient
from worker.explainer import Explain, Explainer, Model
from worker.nats_server import NatsServer
from worker.testing import WorkerProcess, event

STOP_TIMEOUT = 30.0


@pytest_asyncio.fixture
async def rmos_nats_server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    """A fresh nats-server with JetStream on loopback, for this test only."""
    server = NatsServer(tmp_path / "rmos-nats")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest_asyncio.fixture
async def rmos_client(rmos_nats_server: NatsServer) -> AsyncIterator[RunsClient]:
    """A ``RunsClient`` connected to the test's server."""
    client = await RunsClient.connect(rmos_nats_server.url)
    try:
        yield client
    finally:
        await client.close()


@pytest_asyncio.fixture
async def rmos_worker(
    rmos_nats_server: NatsServer, rmos_client: RunsClient, tmp_path: Path
) -> AsyncIterator[WorkerProcess]:
    """A worker on the test's server, ready; stopped and reaped afterwards."""
    worker = WorkerProcess(rmos_nats_server.url, tmp_path / "rmos-data")
    try:
        await worker.start(rmos_client)
        yield worker
    finally:
        if worker.proc is not None and worker.proc.returncode is None:
            try:
                await worker.terminate(STOP_TIMEOUT)
            except TimeoutError:
                await worker.kill()
        if worker in WorkerProcess.started:
            WorkerProcess.started.remove(worker)


@pytest.fixture
def rmos_event() -> Callable[..., dict[str, Any]]:
    """``rmos_event(**fields)``: a valid OK/GREEN run event with a fresh ``event_id``;
    ``fields`` override or add (None removes a key)."""
    return event


@pytest_asyncio.fixture
async def rmos_explainer(
    rmos_nats_server: NatsServer,
) -> AsyncIterator[Callable[..., Awaitable[Explainer]]]:
    """``await rmos_explainer(explain, **options)``: an SDK explainer serving ``explain`` on the
    test's server (``options`` as ``Explainer``'s: ``concurrency``, ``timeout``...), started
    and, after the test, stopped."""
    started: list[Explainer] = []

    async def start(model: Explain | Model, **options: Any) -> Explainer:
        explainer = Explainer(model, rmos_nats_server.url, **options)
        await explainer.start()
        started.append(explainer)
        return explainer

    try:
        yield start
    finally:
        for explainer in started:
            await explainer.stop()
