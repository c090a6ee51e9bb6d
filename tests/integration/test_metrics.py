"""The metrics port of a real worker: ``/metrics`` (one process, and a ``--processes`` group as
one target), ``/healthz`` and ``/readyz``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
from pathlib import Path

from contracts.canonical import derive_run_id
from contracts.subjects import Subjects
from tests.integration.test_lifecycle import blocked_run
from tests.support import BOTH_STORES, WorkerProcess, event, eventually, stored, wait_settled
from worker.client import RunsApiError, RunsClient
from worker.nats_server import NatsServer

SAMPLE = re.compile(r"^(\w+(?:\{[^}]*\})?) (\S+)$")
SAMPLE_EVERY_S = 5.0  # worker.health.SAMPLE_EVERY_S


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


async def probe(port: int, path: str = "/readyz") -> tuple[int, dict[str, object]]:
    """(HTTP status, JSON body) of a probe."""
    status, body = await http_get(port, path)
    return int(status.split()[1]), json.loads(body)


async def ready(port: int) -> None:
    async def check() -> bool | None:
        with contextlib.suppress(OSError):
            return True if (await probe(port))[0] == 200 else None
        return None

    await eventually(check, timeout=30)


async def sampled(port: int, name: str, wanted: float) -> dict[str, float]:
    """The scrape once ``name`` reads ``wanted`` (the sampler runs every few seconds)."""

    async def check() -> dict[str, float] | None:
        samples = await scrape(port)
        return samples if samples.get(name) == wanted else None

    return await eventually(check, timeout=3 * SAMPLE_EVERY_S)


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
        # Answering api.get comes first: a jetstream store's list index is "being built" (503)
        # until its follower's first look at the stream, an instant that a slow machine shows.
        await ready(port)
        assert await probe(port) == (200, {"ready": True})
        assert await probe(port, "/healthz") == (200, {"alive": True})
        before = await scrape(port)
        assert before["rmos_event_ack_latency_seconds_count"] == 0
        assert before['rmos_events_total{outcome="stored"}'] == 0

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
        assert samples['rmos_api_requests_total{code="ok",op="get"}'] >= 1
        assert samples['rmos_api_requests_total{code="INVALID_REQUEST",op="unknown"}'] == 1
        assert samples["rmos_explain_patches_ignored_total"] == 0
        # Histograms: the acked event's latency, the commits and their batches, the API by op.
        assert samples["rmos_event_ack_latency_seconds_count"] == 1
        assert samples['rmos_event_ack_latency_seconds_bucket{le="+Inf"}'] == 1
        assert 0 < samples["rmos_event_ack_latency_seconds_sum"] < 10
        commits = samples["rmos_group_commit_seconds_count"]
        assert commits == samples["rmos_group_commits_total"]
        assert samples["rmos_batch_size_events_count"] == commits
        assert samples["rmos_batch_size_events_sum"] == 2  # the event and the bad one
        assert samples['rmos_api_request_seconds_count{op="get"}'] >= 1
        assert samples['rmos_api_request_seconds_count{op="unknown"}'] == 1
        # Gauges, the build and the process.
        assert samples["rmos_store_outage"] == 0
        assert [k for k in samples if k.startswith("rmos_build_info{version=")]
        assert samples["process_cpu_seconds_total"] > 0
        assert samples["process_resident_memory_bytes"] > 0
        assert (await http_get(port, "/"))[0] == "HTTP/1.1 404 Not Found"

        run = await blocked_run(client)  # PENDING: nobody explains here
        assert run["explanation_status"] == "PENDING"
        samples = await sampled(port, "rmos_explanations_pending", 1)
        assert samples["rmos_explanations_pending_oldest_seconds"] >= 0
        await asyncio.sleep(1.5)
        samples = await sampled(port, "rmos_explanations_pending", 1)
        assert samples["rmos_explanations_pending_oldest_seconds"] >= 1  # it grows
        assert samples["rmos_events_pending"] == 0
        assert samples["rmos_events_ack_pending"] == 0
        assert await proc.terminate() == 0

    async def test_one_target_for_a_group(
        self,
        nats_server: NatsServer,
        client: RunsClient,
        tmp_path: Path,
        store_env: dict[str, str],
    ) -> None:
        """``--processes 2``: the first process's port serves the counts of both (multiprocess
        mode); the sibling has no port of its own."""
        port = free_ports(2)
        data = tmp_path / "data"
        env = {**store_env, "RMOS_METRICS_PORT": str(port), "RMOS_PROCESSES": "2"}
        proc = WorkerProcess(nats_server.url, data, env=env)
        await proc.start(client)

        async def both_ready() -> bool | None:
            return True if proc.ready_lines() == 2 else None

        await eventually(both_ready)
        await ready(port)  # the first process waits for its sibling's start-up too
        await asyncio.gather(*(client.publish_event(event(f"m{i}")) for i in range(300)))
        await wait_settled(client.js)
        samples = await scrape(port)
        assert samples['rmos_events_total{outcome="stored"}'] == 300
        assert samples["rmos_event_ack_latency_seconds_count"] == 300
        assert samples["rmos_batch_size_events_sum"] == 300
        assert samples['process_cpu_seconds_total{process="0"}'] > 0
        assert samples['process_cpu_seconds_total{process="1"}'] > 0
        assert [k for k in samples if k.startswith("python_info{")]
        [group] = (data / "metrics").iterdir()
        assert len(list(group.glob("counter_*.db"))) == 2  # one file a process, summed
        with contextlib.suppress(OSError), contextlib.closing(socket.socket()) as sibling:
            sibling.connect(("127.0.0.1", port + 1))
            raise AssertionError("the sibling serves a port of its own")
        assert await proc.terminate() == 0
        assert list((data / "metrics").iterdir()) == []  # the group's files went with it
