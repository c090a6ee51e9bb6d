"""Store benchmark: the files store against the jetstream store (``RMOS_STORE=jetstream``).

One run on this machine, real nats-server processes on loopback (one server, or a 3-node
``NatsCluster``), every store on the /work disk; each figure a median of ``--repeats``:

1. ingest   the worker (``python -m worker.cli worker``) ingesting N events published
            concurrently (``publish_async``, at most 1000 in flight), from the first publish
            until the durable consumer's ack floor is the last sequence (as ``ingest_bench``'s
            phase 2), on a fresh server or cluster each time:
              (a) files store, one nats-server
              (b) jetstream store, 3-node cluster, R3
              (c) as (b), every node fsyncing each write before its PubAck (``sync_always``)
              (d) jetstream store at R1 on the 3-node cluster (``RMOS_STORE_REPLICAS=1``)
            and ``ingest_bench``'s bare nats-py pull consumer on a 3-node cluster (streams R3).
2. lookup   M runs written straight into the ``RMOS_RUNS`` bucket (concurrent publishes to
            ``$KV.RMOS_RUNS.<run_id>``, the worker's encoding and create-if-absent header), then
            per repeat a worker on a fresh data dir: the rebuild of its ``list`` index (spawn ->
            ``list`` answers and shows the newest run), then ``get`` and ``list`` (status +
            tool_id, limit 50) p50/p99 through ``RunsClient``, against a bare core-NATS
            request-reply on the same route (requester on n0, responder on the worker's n1).
3. lag      two workers on one cluster (two data dirs: two hosts) sharing the flood of N
            events; how long after a probe run's creation (its KV entry's timestamp) a ``list``
            on worker B first shows it, and B's gauge ``rmos_projection_lag_seconds``.

Usage: .venv/bin/python bench/store_bench.py [--events N] [--runs M] [--repeats R]
       [--samples K] [--probes P] [--quiet S] [--timeout S] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import random
import re
import sqlite3
import sys
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats.errors
from ingest_bench import (
    READY_TIMEOUT,
    SETTINGS,
    SOURCE,
    STREAM,
    SUBJECTS,
    BenchError,
    CpuMeter,
    Prepared,
    Rep,
    all_files,
    bare_consume,
    bounded,
    connection,
    dlq_count,
    in_temp_dir,
    make_event,
    median,
    mixed_event,
    nats_summed,
    note_code_change,
    per_message,
    percentile,
    prepare,
    print_findings,
    publish_all,
    running_worker,
    wait_quiet,
    wait_settled,
)
from ingest_bench import Config as IngestConfig
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import PubAck

from contracts.api import ListPage
from contracts.canonical import derive_run_id
from worker.client import RunsApiError, RunsClient
from worker.core.ingest import build_artifact, check_event
from worker.nats_cluster import NatsCluster, free_port
from worker.nats_server import NatsServer
from worker.store.jetstream import EXPECTED_LAST_SUBJECT_SEQ, JetStreamStore
from worker.store.revisions import encode
from worker.testing import WorkerProcess

RUNS_BUCKET = f"{SUBJECTS.stream_prefix}_RUNS"
RUNS_STREAM = f"KV_{RUNS_BUCKET}"
FILL_CHUNK = 10_000
TOOLS = tuple(f"tool-{k:02d}" for k in range(20))
PROBE_SESSION = "lag-probe"
ECHO_SUBJECT = "bench.echo"
POLL_S = 0.02  # the lag poller's pause between two list requests
JETSTREAM_R3 = {"RMOS_STORE": "jetstream", "RMOS_STORE_REPLICAS": "3"}
PHASES = frozenset({"ingest", "lookup", "lag"})


@dataclass(frozen=True)
class Config:
    events: int
    runs: int
    repeats: int
    samples: int
    probes: int
    quiet_s: float
    in_flight: int
    keep: bool = False
    phases: frozenset[str] = PHASES

    def ingest(self) -> IngestConfig:
        """What ``ingest_bench``'s helpers read (publish window, fetch size, timeouts)."""
        return IngestConfig(
            events=self.events, stored=0, reps=self.repeats, batch=SETTINGS.batch_size,
            in_flight=self.in_flight, trickle=0, trickle_rate=100.0, integral_floats=False,
            profile=None, quiet_s=self.quiet_s, processes=1,
        )  # fmt: skip

    def ingest_timeout(self) -> float:
        return self.ingest().ingest_timeout()

    def rebuild_timeout(self) -> float:
        """Generous: the bucket replayed at 200 runs/s, plus start-up slack."""
        return 120.0 + self.runs / 200.0


# ------------------------------------------------------------------------------------- servers


@dataclass(frozen=True)
class Servers:
    """A running server or cluster: the client URL (list), each node's URL, their pids."""

    url: str
    urls: list[str]
    pids: dict[str, int | None]


@contextlib.asynccontextmanager
async def single_server(root: Path) -> AsyncIterator[Servers]:
    server = NatsServer(root)
    try:
        await server.start()
        yield Servers(server.url, [server.url], {"nats": server.pid})
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def cluster(root: Path, sync_always: bool = False) -> AsyncIterator[Servers]:
    nodes = NatsCluster(root, sync_always=sync_always)
    try:
        await nodes.start()  # a node that did not start is stopped below with the rest
        pids = {f"nats{i}": node.pid for i, node in enumerate(nodes.nodes)}
        yield Servers(nodes.url, nodes.urls, pids)
    finally:
        await nodes.stop()


async def leaders(js: JetStreamContext, streams: Sequence[str]) -> str:
    """Which node leads each stream (``events n1, runs n0``): placement varies per run."""
    parts = []
    for stream in streams:
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            info = await js.stream_info(stream)
            leader = info.cluster.leader if info.cluster is not None else "?"
            parts.append(f"{stream.removeprefix('KV_').split('_')[-1].lower()} {leader}")
    return ", ".join(parts)


# -------------------------------------------------------------------------------- 1. ingest


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    clustered: bool
    sync_always: bool
    env: dict[str, str]


VARIANTS = (
    Variant("files", "(a) files store, 1 nats-server", False, False,
            {"RMOS_STORE": "files", "RMOS_STORE_REPLICAS": "1"}),
    Variant("r3", "(b) jetstream R3, 3 nodes", True, False, JETSTREAM_R3),
    Variant("r3sync", "(c) jetstream R3, sync_always", True, True, JETSTREAM_R3),
    Variant("r1", "(d) jetstream R1, 3 nodes", True, False,
            {"RMOS_STORE": "jetstream", "RMOS_STORE_REPLICAS": "1"}),
)  # fmt: skip


def servers_for(work: Path, variant: Variant) -> contextlib.AbstractAsyncContextManager[Servers]:
    if variant.clustered:
        return cluster(work / "cluster", variant.sync_always)
    return single_server(work / "nats")


async def bare_rep(cfg: Config, work: Path, events: Sequence[Prepared]) -> Rep:
    """ingest_bench's bare consumer, on a 3-node cluster with the streams at R3."""
    async with cluster(work / "cluster") as srv, connection(srv.url) as nc:
        rep = await bare_consume(cfg.ingest(), nc, srv.pids, events, replicas=3)
        print(f"      leaders: {await leaders(nc.jetstream(), [STREAM])}", flush=True)
    return rep


async def ingest_rep(cfg: Config, work: Path, variant: Variant, events: Sequence[Prepared]) -> Rep:
    """One worker, one flood: first publish -> ack floor at the last sequence; then checks."""
    async with (
        servers_for(work, variant) as srv,
        running_worker(srv.url, work / "data", work / "worker.log", env=variant.env) as worker,
        connection(srv.url) as nc,
    ):
        client = RunsClient(nc, SUBJECTS, timeout=10.0)
        ready_s = await worker.wait_ready(client, READY_TIMEOUT)
        meter = CpuMeter({"worker": worker.pid, **srv.pids, "bench": os.getpid()})
        meter.start()
        started = time.perf_counter()
        _, last_seq = await publish_all(nc, events, cfg.in_flight, cfg.ingest_timeout())
        published = time.perf_counter()
        try:
            ended = await wait_settled(nc.jetstream(), last_seq, cfg.ingest_timeout(), poll=0.01)
        except TimeoutError:
            worker.check_alive()
            raise BenchError(f"worker did not settle:\n{worker.log(4000)}") from None
        used = nats_summed(meter.stop(), srv.pids)
        await check_stored(client, worker, variant, events)
        if variant.clustered:
            placed = await leaders(nc.jetstream(), [STREAM, RUNS_STREAM])
            print(f"      leaders: {placed}", flush=True)
    wall = ended - started
    cpu = per_message({k: used[k] for k in ("worker", "nats", "bench")}, len(events))
    extra = {
        "s": wall,
        "publish msg/s": len(events) / (published - started),
        "ready s": ready_s,
        "worker cores": used["worker"] / wall,
        "nats cores": used["nats"] / wall,
        "others cores": used["others"] / wall,
    }
    return Rep(len(events) / wall, cpu, extra)


async def check_stored(
    client: RunsClient, worker: WorkerProcess, variant: Variant, events: Sequence[Prepared]
) -> None:
    """Every event is a stored run (files: its file; jetstream: a key each) and none died."""
    if dead := await dlq_count(client.js):
        raise BenchError(f"{dead} dead letters during the run")
    if variant.env["RMOS_STORE"] == "files":
        await all_files(worker.data_dir, events, 10.0)
        return
    keys = (await client.js.stream_info(RUNS_STREAM)).state.messages
    if keys != len(events):
        raise BenchError(f"{keys} values in {RUNS_STREAM} after {len(events)} events were acked")
    for event in (events[0], events[-1]):
        await client.get(event.run_id)  # raises RunsApiError when absent


# -------------------------------------------------------------------------------- 2. lookup


@dataclass
class Fill:
    run_ids: list[str]
    newest: str  # the run ``list`` shows first (created last)
    seconds: float  # publishing only (artifacts are built between the timed chunks)


def fill_chunk(start: int, stop: int, first: datetime) -> list[tuple[str, bytes]]:
    """(subject, value) of runs ``start``..``stop``: ``build_artifact`` + ``encode``, as stored."""
    out = []
    now = datetime.now(UTC)
    for i in range(start, stop):
        raw = json.dumps(mixed_event("fill", i, first + timedelta(milliseconds=i), TOOLS)).encode()
        checked = check_event(raw, subject_source=SOURCE, max_bytes=SETTINGS.max_event_bytes)
        artifact = build_artifact(checked, parent=None, stored_at=now, now=now)
        out.append((f"$KV.{RUNS_BUCKET}.{checked.run_id}", encode(artifact)))
    return out


async def fill_bucket(cfg: Config, nc: Client, work: Path) -> Fill:
    """Declare the store as the worker does, then write M runs with concurrent publishes."""
    store = JetStreamStore(nc.jetstream, nats.connect, SUBJECTS, work / "filler", replicas=3)
    await store.declare()
    js = nc.jetstream(publish_async_max_pending=cfg.in_flight)
    first = datetime.now(UTC) - timedelta(milliseconds=cfg.runs)
    run_ids: list[str] = []
    seconds = 0.0
    for start in range(0, cfg.runs, FILL_CHUNK):
        values = fill_chunk(start, min(cfg.runs, start + FILL_CHUNK), first)
        started = time.perf_counter()
        futures: list[asyncio.Future[PubAck]] = []
        async with asyncio.timeout(cfg.ingest_timeout()):
            for subject, value in values:
                create = {EXPECTED_LAST_SUBJECT_SEQ: "0"}  # as JetStreamStore._create
                future = await js.publish_async(
                    subject, value, wait_stall=60.0, stream=RUNS_STREAM, headers=create
                )
                futures.append(future)
            await asyncio.gather(*futures)
        seconds += time.perf_counter() - started
        run_ids += [subject.rpartition(".")[2] for subject, _ in values]
    keys = (await js.stream_info(RUNS_STREAM)).state.messages
    if keys != cfg.runs:
        raise BenchError(f"{keys} values in {RUNS_STREAM} after writing {cfg.runs}")
    return Fill(run_ids, run_ids[-1], seconds)


@dataclass
class Rebuild:
    ready_s: float = math.nan  # spawn -> first reply of any kind
    listed_s: float = math.nan  # spawn -> list answers with the newest run first
    unavailable: int = 0  # UNAVAILABLE replies meanwhile
    early_ok: int = 0  # ok replies that did not show the newest run yet
    first_early_items: int = -1  # items in the first such reply


async def wait_rebuilt(
    client: RunsClient, worker: WorkerProcess, newest: str, timeout: float
) -> Rebuild:
    """Poll ``list(limit=1)`` every 50 ms from the worker's spawn until it shows ``newest``."""
    out = Rebuild()
    async with asyncio.timeout(timeout):
        while True:
            worker.check_alive()
            try:
                page = await client.list_page(limit=1)
            except RunsApiError as exc:
                if exc.code != "UNAVAILABLE":
                    raise BenchError(f"list during the rebuild: {exc}") from None
                out.unavailable += 1
            except (nats.errors.Error, TimeoutError):
                pass  # not subscribed yet
            else:
                if page.items and page.items[0].run_id == newest:
                    out.listed_s = time.perf_counter() - worker.spawned_at
                    return out
                out.early_ok += 1
                if out.first_early_items < 0:
                    out.first_early_items = len(page.items)
            if math.isnan(out.ready_s) and (out.unavailable or out.early_ok):
                out.ready_s = time.perf_counter() - worker.spawned_at
            await asyncio.sleep(0.05)


def indexed_count(data_dir: Path) -> int:
    """Rows of the worker's list index, read directly (read-only)."""
    with contextlib.closing(
        sqlite3.connect(f"file:{data_dir / 'index.sqlite'}?mode=ro", uri=True)
    ) as db:
        (n,) = db.execute("SELECT count(*) FROM runs").fetchone()
    return int(n)


async def timed(call: Callable[[], Awaitable[object]], n: int, warmup: int = 20) -> list[float]:
    """Milliseconds of ``n`` sequential calls, after ``warmup`` untimed ones."""
    for _ in range(min(warmup, n)):
        await call()
    out = []
    for _ in range(n):
        started = time.perf_counter_ns()
        await call()
        out.append((time.perf_counter_ns() - started) / 1e6)
    return out


@contextlib.asynccontextmanager
async def echo_responder(url: str) -> AsyncIterator[None]:
    """A trivial core-NATS responder (echoes the request) on the node at ``url``."""

    async def respond(msg: Msg) -> None:
        await msg.respond(msg.data)

    async with connection(url) as nc:
        sub = await nc.subscribe(ECHO_SUBJECT, cb=respond)
        await nc.flush()
        try:
            yield
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()


async def bare_round_trips(nc: Client, responder_url: str, n: int) -> list[float]:
    body = json.dumps({"run_id": "run_" + "0" * 32}).encode()

    async def call() -> None:
        await nc.request(ECHO_SUBJECT, body, timeout=5.0)

    async with echo_responder(responder_url):
        async with asyncio.timeout(10.0):  # until the interest has crossed the route
            while True:
                with contextlib.suppress(nats.errors.NoRespondersError):
                    await call()
                    break
                await asyncio.sleep(0.05)
        return await timed(call, n)


async def lookup_rep(
    cfg: Config, srv: Servers, nc: Client, work: Path, fill: Fill, rng: random.Random
) -> dict[str, float]:
    """A worker on n1 with a fresh data dir: its index rebuilt, then get/list/bare latencies
    from the bench's connection on n0."""
    data_dir = work / "data"
    async with running_worker(srv.urls[1], data_dir, work / "worker.log", env=JETSTREAM_R3) as w:
        client = RunsClient(nc, SUBJECTS, timeout=10.0)
        rebuild = await wait_rebuilt(client, w, fill.newest, cfg.rebuild_timeout())
        indexed = await asyncio.to_thread(indexed_count, data_dir)
        if indexed != cfg.runs:
            raise BenchError(f"the rebuilt index holds {indexed} runs, the bucket {cfg.runs}")
        await wait_quiet(cfg.quiet_s)
        gets = await timed(lambda: client.get(rng.choice(fill.run_ids)), cfg.samples)
        items: list[int] = []

        async def list_call() -> None:
            page = await client.list_page(status="ERROR", tool_id=rng.choice(TOOLS), limit=50)
            items.append(len(page.items))

        lists = await timed(list_call, cfg.samples)
        bare = await bare_round_trips(nc, srv.urls[1], cfg.samples)
    log = w.log_path.read_text(errors="replace")
    match = re.search(r"build\w* it \((\d+) changes\)", log)
    return {
        "rebuild runs/s": cfg.runs / rebuild.listed_s,
        "rebuild s": rebuild.listed_s,
        "rebuild runs/s after ready": cfg.runs / (rebuild.listed_s - rebuild.ready_s),
        "ready s": rebuild.ready_s,
        "unavailable replies": rebuild.unavailable,
        "early ok replies": rebuild.early_ok,
        "first early items": rebuild.first_early_items,
        "logged rebuild changes": float(match.group(1)) if match else math.nan,
        "get p50 ms": percentile(gets, 50),
        "get p99 ms": percentile(gets, 99),
        "list p50 ms": percentile(lists, 50),
        "list p99 ms": percentile(lists, 99),
        "list items avg": sum(items) / len(items),
        "bare p50 ms": percentile(bare, 50),
        "bare p99 ms": percentile(bare, 99),
    }


async def lookup_phase(cfg: Config, tmp: Path, res: Results) -> None:
    work = tmp / "lookup"
    rng = random.Random(7)
    async with cluster(work / "cluster") as srv, connection(srv.urls[0]) as nc:
        await wait_quiet(cfg.quiet_s)
        fill = await fill_bucket(cfg, nc, work)
        res.fill_rate = cfg.runs / fill.seconds
        placed = await leaders(nc.jetstream(), [RUNS_STREAM])
        print(f"fill     {res.fill_rate:>9,.0f} runs/s into {RUNS_BUCKET} ({placed})", flush=True)
        for rep in range(1, cfg.repeats + 1):
            note_code_change(f"lookup rep {rep}")
            await wait_quiet(cfg.quiet_s)
            rep_dir = work / f"rep{rep}"
            rep_dir.mkdir()
            result = await lookup_rep(cfg, srv, nc, rep_dir, fill, rng)
            res.lookup.append(result)
            print(f"rep {rep} lookup   {figures(result)}", flush=True)


# ----------------------------------------------------------------------------------- 3. lag


def prepare_probed(tag: str, n: int, probes: int) -> tuple[list[Prepared], dict[str, str]]:
    """``n`` events, every (n / probes)-th in the ``lag-probe`` session; the probes' run ids
    with their creation times (``created_at_utc``, the list's order and ``created_from``)."""
    every = max(1, n // max(1, probes))
    events: list[Prepared] = []
    probed: dict[str, str] = {}
    start = datetime.now(UTC)
    for i in range(n):
        event = make_event(tag, i, occurred_at=start + timedelta(microseconds=i))
        run_id = derive_run_id(SOURCE, event["event_id"])
        if i % every == 0 and len(probed) < probes:
            event["workflow_session_id"] = PROBE_SESSION
            probed[run_id] = event["occurred_at"]
        msg_id = f"{SOURCE}:{event['event_id']}"
        events.append(Prepared(msg_id, json.dumps(event).encode(), run_id))
    return events, probed


@dataclass
class Poller:
    """Asks ``list(workflow_session_id=lag-probe, created_from=<oldest probe not yet seen>)``
    again and again, one request at a time, and notes when each probe was first listed by
    worker B (wall clock, ns, when the reply arrived). The API is one queue group, so a request
    reaches A or B at random: B's ``list`` counter, read before and after each request, says
    which one answered (the poller is the only ``list`` caller)."""

    client: RunsClient
    port_b: int
    probes: dict[str, str]
    seen: dict[str, int] = field(default_factory=dict)  # run id -> first listed by B
    by_b: list[int] = field(default_factory=list)  # when each reply of B arrived
    by_a: int = 0
    unavailable: int = 0
    failed: int = 0  # no reply in time, no responders
    rtt_ms: list[float] = field(default_factory=list)

    def done(self) -> bool:
        return len(self.seen) == len(self.probes)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set() and not self.done():
            before = metric(await scrape(self.port_b), LIST_OK)
            page = await self._ask()
            now = time.time_ns()
            if page is not None and metric(await scrape(self.port_b), LIST_OK) > before:
                self.by_b.append(now)
                for item in page.items:
                    self.seen.setdefault(item.run_id, now)
            elif page is not None:
                self.by_a += 1
            await asyncio.sleep(POLL_S)

    async def _ask(self) -> ListPage | None:
        """One ``list`` from the oldest probe not yet seen on; None when it failed."""
        oldest = min(c for r, c in self.probes.items() if r not in self.seen)
        started = time.perf_counter()
        try:
            return await self.client.list_page(
                workflow_session_id=PROBE_SESSION, created_from=oldest, limit=500
            )
        except RunsApiError as exc:
            if exc.code != "UNAVAILABLE":
                raise
            self.unavailable += 1
        except (nats.errors.Error, TimeoutError):
            self.failed += 1
        finally:
            self.rtt_ms.append((time.perf_counter() - started) * 1e3)
        return None


class IndexWatch:
    """B's list index read directly (read-only) every 10 ms: when each probe's row appeared."""

    def __init__(self, path: Path, probes: Mapping[str, str]) -> None:
        self.path = path
        self.probes = probes
        self.seen: dict[str, int] = {}

    def _rows(self) -> list[str]:
        uri = f"file:{self.path}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=1.0)) as db:
            query = "SELECT run_id FROM runs WHERE workflow_session_id = ?"
            return [row[0] for row in db.execute(query, (PROBE_SESSION,))]

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set() and len(self.seen) < len(self.probes):
            with contextlib.suppress(sqlite3.Error):
                rows = await asyncio.to_thread(self._rows)
                now = time.time_ns()
                for run_id in rows:
                    self.seen.setdefault(run_id, now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.01)


async def scrape(port: int) -> dict[str, float]:
    """``GET /metrics`` of a worker: ``name{labels}`` -> value."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2.0)
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        text = (await asyncio.wait_for(reader.read(), 2.0)).decode()
    finally:
        writer.close()
    out = {}
    for line in text.partition("\r\n\r\n")[2].splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


async def sample_lag_gauge(port: int, samples: list[float], stop: asyncio.Event) -> None:
    """``rmos_projection_lag_seconds`` of one worker every 100 ms until ``stop``."""
    while not stop.is_set():
        with contextlib.suppress(OSError, TimeoutError, ValueError, KeyError):
            samples.append((await scrape(port))["rmos_projection_lag_seconds"])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)


def metric(values: Mapping[str, float], name: str) -> float:
    return values.get(name, 0.0)


LIST_OK = 'rmos_api_requests_total{code="ok",op="list"}'  # labels sorted by name
STORED = 'rmos_events_total{outcome="stored"}'


async def kv_times(js: JetStreamContext, run_ids: Iterable[str]) -> dict[str, int]:
    """When the leader stored each run's KV entry (wall clock, ns)."""
    out = {}
    for run_id in run_ids:
        msg = await js.get_msg(RUNS_STREAM, subject=f"$KV.{RUNS_BUCKET}.{run_id}")
        assert msg.time is not None
        out[run_id] = int(msg.time.timestamp() * 1e9)
    return out


@dataclass
class LagWatch:
    """What runs beside the flood: the list poller, B's index, the sampler of B's gauge."""

    poller: Poller
    index: IndexWatch
    gauge: list[float] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self.tasks = [
            asyncio.create_task(self.poller.run(self.stop)),
            asyncio.create_task(self.index.run(self.stop)),
            asyncio.create_task(sample_lag_gauge(self.poller.port_b, self.gauge, self.stop)),
        ]

    async def finish(self, timeout: float) -> None:
        """Until every probe was listed by B (at most ``timeout``), then stop all three."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.tasks[0]), timeout)
        self.stop.set()
        await asyncio.gather(*self.tasks)

    def cancel(self) -> None:
        for task in self.tasks:
            task.cancel()


async def lag_rep(cfg: Config, work: Path, rep: int) -> dict[str, float]:
    """Workers A (on n1) and B (on n2) share a flood published on n0; ``list`` asked on n2."""
    events, probes = prepare_probed(f"lag{rep}", cfg.events, cfg.probes)
    ports = [free_port(), free_port()]
    async with contextlib.AsyncExitStack() as stack:
        srv = await stack.enter_async_context(cluster(work / "cluster"))
        pub = await stack.enter_async_context(connection(srv.urls[0]))
        client = RunsClient(await stack.enter_async_context(connection(srv.urls[2])), SUBJECTS)
        workers = []
        for name, url, port in (("a", srv.urls[1], ports[0]), ("b", srv.urls[2], ports[1])):
            env = {**JETSTREAM_R3, "RMOS_METRICS_PORT": str(port)}
            worker = await stack.enter_async_context(
                running_worker(url, work / name, work / f"{name}.log", env=env)
            )
            await worker.wait_ready(client, READY_TIMEOUT)
            workers.append(worker)
        before = [await scrape(port) for port in ports]
        index = IndexWatch(workers[1].data_dir / "index.sqlite", probes)
        watch = LagWatch(Poller(client, ports[1], probes), index)
        stack.callback(watch.cancel)
        await wait_quiet(cfg.quiet_s)
        watch.start()
        started = time.perf_counter()
        sent_ns, last_seq = await publish_all(pub, events, cfg.in_flight, cfg.ingest_timeout())
        try:
            ended = await wait_settled(pub.jetstream(), last_seq, cfg.ingest_timeout(), 0.01)
        except TimeoutError:
            for worker in workers:
                worker.check_alive()
            raise BenchError("the two workers did not settle") from None
        await watch.finish(30.0)
        after = [await scrape(port) for port in ports]
        stored_at = await kv_times(pub.jetstream(), watch.poller.seen.keys() | index.seen.keys())
    sent = {e.run_id: t for e, t in zip(events, sent_ns, strict=True)}
    counts = [
        {k: metric(a, k) - metric(b, k) for k in (LIST_OK, STORED)}
        for a, b in zip(after, before, strict=True)
    ]
    return {
        "e2e msg/s": len(events) / (ended - started),
        **lag_figures(watch, stored_at, sent),
        "lists counted by B": counts[1][LIST_OK],
        "lists counted by A": counts[0][LIST_OK],
        "stored by B %": 100.0 * counts[1][STORED] / max(1.0, sum(c[STORED] for c in counts)),
    }


def lag_figures(
    watch: LagWatch, stored_at: Mapping[str, int], sent: Mapping[str, int]
) -> dict[str, float]:
    poller = watch.poller
    listed = [(t - stored_at[r]) / 1e6 for r, t in poller.seen.items()]
    indexed = [(t - stored_at[r]) / 1e6 for r, t in watch.index.seen.items()]
    since_publish = [(t - sent[r]) / 1e6 for r, t in poller.seen.items()]
    gaps = [(b - a) / 1e6 for a, b in itertools.pairwise(poller.by_b)]
    return {
        "probes": len(poller.probes),
        "probes listed by B": len(poller.seen),
        "lag p50 ms": percentile(listed, 50),
        "lag p99 ms": percentile(listed, 99),
        "lag max ms": max(listed, default=math.nan),
        "index lag p50 ms": percentile(indexed, 50),
        "index lag p99 ms": percentile(indexed, 99),
        "publish->listed p50 ms": percentile(since_publish, 50),
        "publish->listed p99 ms": percentile(since_publish, 99),
        "gauge p50 ms": percentile(watch.gauge, 50) * 1e3,
        "gauge p99 ms": percentile(watch.gauge, 99) * 1e3,
        "gauge max ms": max(watch.gauge, default=math.nan) * 1e3,
        "gauge samples": len(watch.gauge),
        "polls by B": len(poller.by_b),
        "polls by A": poller.by_a,
        "B poll gap p50 ms": percentile(gaps, 50),
        "list rtt p50 ms": percentile(poller.rtt_ms, 50),
        "list rtt p99 ms": percentile(poller.rtt_ms, 99),
        "unavailable replies": poller.unavailable,
        "failed polls": poller.failed,
    }


# ----------------------------------------------------------------------------------- report


@dataclass
class Results:
    ingest: dict[str, list[Rep]] = field(default_factory=dict)
    fill_rate: float = math.nan
    lookup: list[dict[str, float]] = field(default_factory=list)
    lag: list[dict[str, float]] = field(default_factory=list)


def figures(values: Mapping[str, float]) -> str:
    return " | ".join(f"{k} {v:,.1f}" for k, v in values.items())


def med(reps: Sequence[Mapping[str, float]], key: str) -> float:
    return median([r.get(key, math.nan) for r in reps])


def ingest_rows(res: Results) -> Iterator[tuple[str, str, str]]:
    def rate(key: str) -> float:
        return median([r.rate for r in res.ingest.get(key, [])])

    def each(key: str) -> str:
        return " / ".join(f"{r.rate:,.0f}" for r in res.ingest.get(key, []))

    files, bare = rate("files"), rate("bare")
    yield ("bare nats-py fetch+ack, 3 nodes R3", f"{bare:,.0f} msg/s", each("bare"))
    for variant in VARIANTS:
        value = rate(variant.key)
        note = f"{each(variant.key)}  ({value / bare:.2f} of bare)"
        if variant.key != "files":
            note = f"{value / files:.2f} of files; " + note
        yield (variant.label, f"{value:,.0f} msg/s", note)


def lookup_rows(cfg: Config, res: Results) -> Iterator[tuple[str, str, str]]:
    reps = res.lookup
    yield (f"fill {cfg.runs:,} runs (direct KV publishes)", f"{res.fill_rate:,.0f} runs/s", "")
    rebuild = med(reps, "rebuild runs/s")
    detail = (
        f"{med(reps, 'rebuild s'):.1f} s from spawn, of which {med(reps, 'ready s'):.1f} s "
        f"until the first reply; after it {med(reps, 'rebuild runs/s after ready'):,.0f} runs/s"
    )
    yield ("list index rebuild", f"{rebuild:,.0f} runs/s", detail)
    for kind, label in (("get", "get (random run)"), ("list", "list status+tool_id, limit 50"),
                        ("bare", "bare request-reply n0->n1")):  # fmt: skip
        p50, p99 = med(reps, f"{kind} p50 ms"), med(reps, f"{kind} p99 ms")
        note = f"avg {med(reps, 'list items avg'):.0f} items" if kind == "list" else ""
        yield (f"{label} p50 / p99", f"{p50:.2f} / {p99:.2f} ms", note)


def lag_rows(res: Results) -> Iterator[tuple[str, str, str]]:
    reps = res.lag

    def pair(key: str) -> str:
        return f"{med(reps, key + ' p50 ms'):,.0f} / {med(reps, key + ' p99 ms'):,.0f} ms"

    listed = f"{med(reps, 'probes listed by B'):.0f} of {med(reps, 'probes'):.0f} probes listed"
    yield ("flood with 2 workers", f"{med(reps, 'e2e msg/s'):,.0f} msg/s", listed)
    every = f"B answered a poll every {med(reps, 'B poll gap p50 ms'):,.0f} ms"
    yield ("KV stored -> listed by B, p50 / p99", pair("lag"), every)
    yield ("KV stored -> row in B's index, p50 / p99", pair("index lag"), "read every 10 ms")
    yield ("publish -> listed by B, p50 / p99", pair("publish->listed"), "")
    yield ("list during the flood, p50 / p99", pair("list rtt"), "")
    peak = f"max {med(reps, 'gauge max ms'):,.0f} ms"
    yield ("B's rmos_projection_lag_seconds p50 / p99", pair("gauge"), peak)


def print_table(title: str, rows: Sequence[tuple[str, str, str]]) -> None:
    print(f"\n{title}")
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def print_report(cfg: Config, res: Results) -> None:
    print(f"\n=== medians of {cfg.repeats} ===")
    if "ingest" in cfg.phases:
        print_table(f"1. durable ingest, {cfg.events:,} events", list(ingest_rows(res)))
    if "lookup" in cfg.phases:
        title = f"2. lookups with {cfg.runs:,} runs in the bucket"
        print_table(title, list(lookup_rows(cfg, res)))
    if "lag" in cfg.phases:
        print_table(f"3. projection lag under a flood of {cfg.events:,}", list(lag_rows(res)))
    print_findings()


# -------------------------------------------------------------------------------------- main


async def ingest_phase(cfg: Config, tmp: Path, res: Results) -> None:
    for rep in range(1, cfg.repeats + 1):
        for key in ("bare", *(v.key for v in VARIANTS)):
            work = tmp / f"{key}-{rep}"
            work.mkdir(parents=True)
            events = prepare(f"{key}{rep}", cfg.events, False)
            note_code_change(f"rep {rep} {key}")
            await wait_quiet(cfg.quiet_s)
            if key == "bare":
                result = await bare_rep(cfg, work, events)
            else:
                variant = next(v for v in VARIANTS if v.key == key)
                result = await ingest_rep(cfg, work, variant, events)
            res.ingest.setdefault(key, []).append(result)
            print(f"rep {rep} {key:<7}{result.line()}", flush=True)


async def lag_phase(cfg: Config, tmp: Path, res: Results) -> None:
    for rep in range(1, cfg.repeats + 1):
        note_code_change(f"lag rep {rep}")
        await wait_quiet(cfg.quiet_s)
        work = tmp / f"lag-{rep}"
        work.mkdir()
        result = await lag_rep(cfg, work, rep)
        res.lag.append(result)
        print(f"rep {rep} lag      {figures(result)}", flush=True)


async def main(cfg: Config) -> int:
    res = Results()

    async def body(tmp: Path) -> None:
        if "ingest" in cfg.phases:
            print("\n1. durable ingest (s = first publish -> ack floor at the last sequence)")
            await ingest_phase(cfg, tmp, res)
        if "lookup" in cfg.phases:
            print(f"\n2. lookups with {cfg.runs:,} runs in the bucket")
            await lookup_phase(cfg, tmp, res)
        if "lag" in cfg.phases:
            print("\n3. projection lag under a flood")
            await lag_phase(cfg, tmp, res)
        print_report(cfg, res)

    return await in_temp_dir("store-", body, keep=cfg.keep)


def parse_args(argv: Sequence[str] | None = None) -> tuple[Config, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=20_000, help="events per flood (20000)")
    parser.add_argument("--runs", type=int, default=100_000, help="runs in the bucket (100000)")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions of each figure (3)")
    parser.add_argument("--samples", type=int, default=1000, help="get/list/bare calls a repeat")
    parser.add_argument("--probes", type=int, default=200, help="runs whose lag is sampled")
    parser.add_argument("--in-flight", type=int, default=1000, help="publish_async window")
    parser.add_argument(
        "--quiet", type=float, default=30.0, help="wait up to S s for an idle machine per phase"
    )
    parser.add_argument("--timeout", type=float, default=5400.0, help="whole run, seconds")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, stores)")
    parser.add_argument(
        "--phases", default="ingest,lookup,lag", help="which phases, comma-separated (all three)"
    )
    args = parser.parse_args(argv)
    phases = set(args.phases.split(","))
    if not phases <= PHASES:
        parser.error(f"--phases: of {', '.join(sorted(PHASES))}")
    if min(args.events, args.runs, args.repeats, args.samples, args.probes) < 1:
        parser.error("--events, --runs, --repeats, --samples and --probes must be >= 1")
    if args.probes > 500:
        parser.error("--probes: at most 500 (one list page holds them all)")
    config = Config(
        events=args.events, runs=args.runs, repeats=args.repeats, samples=args.samples,
        probes=args.probes, quiet_s=args.quiet, in_flight=args.in_flight, keep=args.keep,
        phases=frozenset(phases),
    )  # fmt: skip
    return config, args.timeout


if __name__ == "__main__":
    config, total_timeout = parse_args()
    sys.exit(asyncio.run(bounded(main(config), total_timeout)))
