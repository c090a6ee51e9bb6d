"""``GET /metrics``: each worker process's counters, for Prometheus."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from pathlib import Path

from contracts.canonical import derive_run_id
from contracts.subjects import Subjects
from tests.support import BOTH_STORES, WorkerProcess, event, eventually, stored, wait_settled
from worker.client import RunsApiError, RunsClient
from worker.nats_server import NatsServer

SAMPLE = re.compile(r"^(\w+(?:\{[^}]*\})?) (\S+)$")


def free_ports(count: int) -> int:
    """A loopback port p such that p .. p+count-1 are all free now."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = int(probe.getsockname()[1])
        with contextlib.ExitStack() as stack:
            try:
                for port in range(first, first + count):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return first
    raise RuntimeError("no run of free ports")


async def http_get(port: int, path: str) -> tuple[str, str]:
    """(status line, body) of one HTTP/1.1 GET on loopback."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    await writer.drain()
    response = (await asyncio.wait_for(reader.read(), 10)).decode()
    writer.close()
    head, _, body = response.partition("\r\n\r\n")
    return head.split("\r\n", 1)[0], body


async def scrape(port: int) -> dict[str, float]:
    status, body = await http_get(port, "/metrics")
    assert status == "HTTP/1.1 200 OK"
    samples = {}
    for line in body.splitlines():
        if line.startswith("#"):
            continue
        found = SAMPLE.match(line)
        assert found, f"not a sample line: {line!r}"
        samples[found.group(1)] = float(found.group(2))
    return samples


@BOTH_STORES
class TestMetrics:
    async def test_counts_what_the_worker_did(
        self,
        nats_server: NatsServer,
        client: RunsClient,
        tmp_path: Path,
        store_env: dict[str, str],
    ) -> None:
        port = free_ports(1)
        env = {**store_env, "RMOS_METRICS_PORT": str(port)}
        proc = WorkerProcess(nats_server.url, tmp_path / "data", env=env)
        await proc.start(client)
        await client.publish_event(event("fine"))
        await client.publish_raw(Subjects().event("engine-a"), b"{not json")
        await stored(client, derive_run_id("engine-a", "fine"))
        await wait_settled(client.js)
        with contextlib.suppress(RunsApiError):
            await client.request("no-such-op", {})
        samples = await scrape(port)
        assert samples['rmos_events_total{outcome="stored"}'] == 1
        assert samples['rmos_events_total{outcome="dead_lettered"}'] == 1
        assert samples['rmos_dead_letters_total{code="INVALID_JSON"}'] == 1
        assert samples["rmos_group_commits_total"] >= 1
        assert samples['rmos_api_requests_total{op="get",code="ok"}'] >= 1
        assert samples['rmos_api_requests_total{op="unknown",code="INVALID_REQUEST"}'] == 1
        assert samples["rmos_explain_patches_ignored_total"] == 0
        assert (await http_get(port, "/"))[0] == "HTTP/1.1 404 Not Found"
        assert await proc.terminate() == 0

    async def test_a_port_for_each_process(
        self,
        nats_server: NatsServer,
        client: RunsClient,
        tmp_path: Path,
        store_env: dict[str, str],
    ) -> None:
        """``--processes 2``: the sibling serves its own counters on the next port."""
        port = free_ports(2)
        env = {**store_env, "RMOS_METRICS_PORT": str(port), "RMOS_PROCESSES": "2"}
        proc = WorkerProcess(nats_server.url, tmp_path / "data", env=env)
        await proc.start(client)

        async def both_ready() -> bool | None:
            return True if proc.ready_lines() == 2 else None

        await eventually(both_ready)
        await asyncio.gather(*(client.publish_event(event(f"m{i}")) for i in range(300)))
        await wait_settled(client.js)
        stored_key = 'rmos_events_total{outcome="stored"}'
        counts = [(await scrape(p)).get(stored_key, 0.0) for p in (port, port + 1)]
        assert sum(counts) == 300
        assert await proc.terminate() == 0
