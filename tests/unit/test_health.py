"""The probes: what /healthz and /readyz say and why, the HTTP handler, the sampled gauges."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from worker import metrics, multiproc
from worker import probe as probe_cmd
from worker.errors import StoreOutageError
from worker.health import Health, Sampler, serve
from worker.outage import Outage
from worker.store.files import FileStore
from worker.store.projection import Projection
from worker.store.revisions import encode


class FakeConnection:
    def __init__(self, state: str = "connected") -> None:
        self.state = state

    @property
    def is_connected(self) -> bool:
        return self.state == "connected"

    @property
    def is_connecting(self) -> bool:
        return self.state == "connecting"

    @property
    def is_reconnecting(self) -> bool:
        return self.state == "reconnecting"

    @property
    def is_closed(self) -> bool:
        return self.state == "closed"


class FakeProjection:
    def __init__(self, position: tuple[int, int] | None) -> None:
        self.at = position

    def position(self) -> tuple[int, int] | None:
        return self.at


def outage() -> Outage:
    return Outage(keepalive_s=10, first_delay_s=0.01, max_delay_s=0.01)


def health(
    connection: FakeConnection | None = None,
    tasks: list[asyncio.Task[None]] | None = None,
    projection: FakeProjection | None = None,
    down: Outage | None = None,
    group: Path | None = None,
) -> Health:
    probe = Health(
        connection=lambda: cast(Client | None, connection),
        outage=down or outage(),
        tasks=tasks if tasks is not None else [],
        projection=cast(Projection | None, projection),
        group=group,
    )
    probe.started = True
    return probe


class TestReadiness:
    async def test_ready(self) -> None:
        assert await health(FakeConnection()).not_ready() == []

    async def test_starting(self) -> None:
        probe = health(None)
        probe.started = False
        assert await probe.not_ready() == ["startup: not finished", "nats: not connected"]

    @pytest.mark.parametrize(
        ("state", "reason"),
        [
            ("connecting", "nats: not connected"),
            ("reconnecting", "nats: reconnecting"),
            ("closed", "nats: connection closed"),
        ],
    )
    async def test_nats(self, state: str, reason: str) -> None:
        assert await health(FakeConnection(state)).not_ready() == [reason]

    async def test_store_down_with_its_cause(self) -> None:
        down = outage()
        stop = asyncio.Event()
        stop.set()

        async def full() -> None:
            raise StoreOutageError("group commit failed: No space left on device")

        with pytest.raises(StoreOutageError):
            await down.persist(full, stop)
        probe = health(FakeConnection(), down=down)
        assert await probe.not_ready() == [
            "store: down (group commit failed: No space left on device)"
        ]

        async def works() -> None:
            return None

        await down.persist(works, stop)
        assert await probe.not_ready() == []

    @pytest.mark.parametrize(
        ("position", "reasons"),
        [
            (None, ["index: being built"]),
            ((3, 10), ["index: rebuilding (3 of 10 changes applied)"]),
            ((10, 10), []),
        ],
    )
    async def test_index(self, position: tuple[int, int] | None, reasons: list[str]) -> None:
        probe = health(FakeConnection(), projection=FakeProjection(position))
        assert await probe.not_ready() == reasons

    async def test_a_dead_task(self) -> None:
        async def dies() -> None:
            raise RuntimeError("boom")

        async def runs() -> None:
            await asyncio.sleep(60)

        tasks = [
            asyncio.create_task(dies(), name="events-consumer"),
            asyncio.create_task(runs(), name="patches-consumer"),
        ]
        await asyncio.sleep(0)
        probe = health(FakeConnection(), tasks=tasks)
        expected = ["task events-consumer: died (RuntimeError('boom'))"]
        assert probe.dead() == expected
        assert await probe.not_ready() == expected
        probe.stopping = True
        tasks[1].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tasks[1]
        assert probe.dead() == expected  # a task cancelled while stopping is no news
        assert await probe.not_ready() == ["worker: stopping", *expected]

    async def test_siblings_until_they_start(self, tmp_path: Path) -> None:
        probe = health(FakeConnection(), group=tmp_path)
        probe.siblings = lambda: [101, 102]
        multiproc.mark_ready(tmp_path, 101)
        assert await probe.not_ready() == ["process 102: start-up not finished"]
        multiproc.mark_ready(tmp_path, 102)
        assert await probe.not_ready() == []

    async def test_a_long_reason_is_cut(self) -> None:
        down = outage()
        stop = asyncio.Event()
        stop.set()

        async def full() -> None:
            raise StoreOutageError("x" * 1000)

        with pytest.raises(StoreOutageError):
            await down.persist(full, stop)
        [reason] = await health(FakeConnection(), down=down).not_ready()
        assert len(reason) == 300
        assert reason.endswith("...")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def request(port: int, raw: bytes) -> tuple[str, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return status, headers, body


async def get(port: int, path: str, accept: str = "") -> tuple[str, dict[str, str], bytes]:
    extra = f"Accept: {accept}\r\n" if accept else ""
    return await request(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())


@pytest.fixture
async def served() -> AsyncIterator[tuple[int, Health, FakeConnection, list[str]]]:
    connection = FakeConnection()
    probe = health(connection)
    accepted: list[str] = []

    async def scraped(accept: str) -> tuple[bytes, str]:
        accepted.append(accept)
        return b"rmos_x 1\n", "text/plain; version=0.0.4"

    port = free_port()
    server = await serve("127.0.0.1", port, probe, scraped)
    try:
        yield port, probe, connection, accepted
    finally:
        server.close()


class TestServer:
    async def test_probes(self, served: tuple[int, Health, FakeConnection, list[str]]) -> None:
        port, _, connection, _ = served
        status, headers, body = await get(port, "/readyz")
        assert (status, headers["content-type"]) == ("HTTP/1.1 200 OK", "application/json")
        assert json.loads(body) == {"ready": True}
        connection.state = "reconnecting"
        status, _, body = await get(port, "/readyz?verbose=1")
        assert status == "HTTP/1.1 503 Service Unavailable"
        assert json.loads(body) == {"ready": False, "reasons": ["nats: reconnecting"]}
        status, _, body = await get(port, "/healthz")  # alive, NATS or not
        assert (status, json.loads(body)) == ("HTTP/1.1 200 OK", {"alive": True})

    async def test_metrics(self, served: tuple[int, Health, FakeConnection, list[str]]) -> None:
        port, _, _, accepted = served
        status, headers, body = await get(port, "/metrics", accept="application/openmetrics-text")
        assert (status, body) == ("HTTP/1.1 200 OK", b"rmos_x 1\n")
        assert headers["content-type"] == "text/plain; version=0.0.4"
        assert int(headers["content-length"]) == len(body)
        assert accepted == ["application/openmetrics-text"]

    async def test_everything_else(
        self, served: tuple[int, Health, FakeConnection, list[str]]
    ) -> None:
        port = served[0]
        assert (await get(port, "/"))[0] == "HTTP/1.1 404 Not Found"
        post = b"POST /readyz HTTP/1.1\r\nContent-Length: 0\r\n\r\n"
        assert (await request(port, post))[0] == "HTTP/1.1 405 Method Not Allowed"
        status, headers, body = await request(port, b"HEAD /healthz HTTP/1.1\r\n\r\n")
        assert (status, body) == ("HTTP/1.1 200 OK", b"")
        assert int(headers["content-length"]) > 0
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GARBAGE")  # then nothing: closed after the read timeout, no crash
        writer.close()
        assert (await get(port, "/healthz"))[0] == "HTTP/1.1 200 OK"

    async def test_a_failing_scrape_is_a_500(self) -> None:
        async def broken(accept: str) -> tuple[bytes, str]:
            raise OSError("metrics files unreadable")

        port = free_port()
        server = await serve("127.0.0.1", port, health(FakeConnection()), broken)
        try:
            assert (await get(port, "/metrics"))[0] == "HTTP/1.1 500 Internal Server Error"
            assert (await get(port, "/healthz"))[0] == "HTTP/1.1 200 OK"
        finally:
            server.close()


class FakeJs:
    def __init__(self) -> None:
        self.info: Any = SimpleNamespace(num_pending=7, num_ack_pending=3)
        self.error: Exception | None = None

    async def consumer_info(self, stream: str, consumer: str, timeout: float) -> Any:
        if self.error is not None:
            raise self.error
        return self.info


def pending_run(n: int, requested: datetime | None) -> dict[str, Any]:
    run: dict[str, Any] = {
        "run_id": f"run_{n:032x}",
        "created_at_utc": f"2026-11-24T10:00:{n:02d}.000000+00:00",
        "status": "BLOCKED",
        "explanation_status": "PENDING",
        "revision": 1,
    }
    if requested is not None:
        run["explanation_requested_at"] = requested.isoformat()
    return run


class TestSampler:
    async def test_consumer_gauges(self) -> None:
        js = FakeJs()
        probe = health(FakeConnection())
        store = FileStore(Path("/nonexistent"))
        sampler = Sampler(lambda: cast(JetStreamContext, js), "S", "C", store, probe)
        await sampler._consumer_info()
        assert metrics.value(metrics.EVENTS_PENDING) == 7
        assert metrics.value(metrics.EVENTS_ACK_PENDING) == 3
        js.error = nats.errors.TimeoutError()
        await sampler.sample()  # NATS away: the gauges keep their values
        assert metrics.value(metrics.EVENTS_PENDING) == 7
        assert probe.consumer_missing is None
        js.error = nats.js.errors.NotFoundError()
        await sampler.sample()
        assert probe.consumer_missing == "consumer C: not found"
        assert "consumer C: not found" in await probe.not_ready()
        js.error = None
        await sampler.sample()
        assert probe.consumer_missing is None

    async def test_pending_explanations(self, tmp_path: Path) -> None:
        store = FileStore(tmp_path / "data")
        await store.open()
        try:
            now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
            oldest = pending_run(1, now - timedelta(seconds=90))
            runs = [oldest, pending_run(2, now - timedelta(seconds=500)), pending_run(3, None)]
            done = {**pending_run(0, None), "explanation_status": "READY"}
            [place] = store.segments.append([encode(oldest)])
            store.log.adopt_places([(oldest["run_id"], place)])  # stored (without a leaf)
            store.index.upsert([*runs, done])
            sampler = Sampler(
                lambda: cast(JetStreamContext, FakeJs()), "S", "C", store,
                health(FakeConnection()), clock=now.timestamp,
            )  # fmt: skip
            await sampler.sample()
            assert metrics.value(metrics.EXPLANATIONS_PENDING) == 3
            # The first created PENDING run, since its (last) request.
            assert metrics.value(metrics.EXPLANATION_OLDEST_SECONDS) == 90
            store.index.upsert([{**r, "explanation_status": "READY"} for r in runs])
            await sampler.sample()
            assert metrics.value(metrics.EXPLANATIONS_PENDING) == 0
            assert metrics.value(metrics.EXPLANATION_OLDEST_SECONDS) == 0
        finally:
            store.close()


class TestProbeCommand:
    """``python -m worker.probe``: the image's HEALTHCHECK."""

    def test_where_it_looks(self) -> None:
        assert probe_cmd.url({}, "/readyz") is None
        env = {"RMOS_METRICS_PORT": "9464", "RMOS_METRICS_HOST": "0.0.0.0"}
        assert probe_cmd.url(env, "/readyz") == "http://127.0.0.1:9464/readyz"
        env["RMOS_METRICS_HOST"] = "::"
        assert probe_cmd.url(env, "/healthz") == "http://[::1]:9464/healthz"
        assert probe_cmd.url({"RMOS_METRICS_PORT": "1"}, "/x") == "http://127.0.0.1:1/x"

    async def test_exit_codes(
        self,
        served: tuple[int, Health, FakeConnection, list[str]],
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        port, _, connection, _ = served
        env = {"RMOS_METRICS_PORT": str(port)}
        assert await asyncio.to_thread(probe_cmd.main, [], env) == 0
        connection.state = "reconnecting"
        assert await asyncio.to_thread(probe_cmd.main, ["/readyz"], env) == 1
        assert "nats: reconnecting" in capsys.readouterr().out
        assert await asyncio.to_thread(probe_cmd.main, ["/healthz"], env) == 0
        assert probe_cmd.main([], {}) == 0  # no port: nothing to probe
        assert probe_cmd.main([], {"RMOS_METRICS_PORT": str(free_port())}) == 1  # refused
