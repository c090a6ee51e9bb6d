"""Ingest benchmark: the bare nats-py pull consumer against the worker's durable ingest.

One run on this machine, a real nats-server on loopback, every store on the /work disk:

1. bare     nats-py ``fetch(batch)`` + ``msg.ack()`` of N pre-published events: no parsing, no disk.
2. empty    the worker (``python -m worker.cli worker``, a subprocess) ingesting N events published
            concurrently with ``publish_async``: first publish -> every run stored and the
            durable consumer settled (nothing pending, nothing unacked). Latency per event is
            the run's ``recorded_at_utc`` minus its publish time (see ``flood_latencies``).
   backlog  the same worker draining N events published before it started: nothing else on the CPUs.
   trickle  publish -> ``api.get`` success, events sent one at a time at a steady rate.
3. ratio    empty / bare (target >= 0.7).
4. stored   as 2, with --stored runs already in the store (target >= 0.9 of empty).
5. group    as 2 and 2b, with ``worker --processes N`` (default: one a CPU; 1 skips it).

Every measurement is repeated (fresh server and store each time) and reported as a median, with
the CPU each process spent per message (from /proc) and, when ``perf`` works, the number of
``syncfs`` calls (two per group commit: the average batch size follows).

Usage: .venv/bin/python bench/ingest_bench.py [--quick] [--events N] [--stored N] [--reps N]
       [--processes N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import PubAck

from contracts.canonical import derive_run_id
from contracts.subjects import EVENTS_CONSUMER
from worker.client import RunsApiError, RunsClient
from worker.connection import servers
from worker.core.ingest import build_artifact, check_event
from worker.core.timefmt import utc_text
from worker.nats_server import NatsServer
from worker.settings import Settings
from worker.store.base import NewRun
from worker.store.files import FileStore
from worker.streams import ensure_consumer, ensure_streams, events_consumer_config
from worker.testing import WorkerExited, WorkerProcess

ROOT = Path(__file__).resolve().parent.parent
TMP_PARENT = ROOT / ".bench-tmp"
SOURCE = "bench-engine"
SETTINGS = Settings()  # the worker's defaults: batch size, consumer config
SUBJECTS = SETTINGS.subjects
STREAM = SUBJECTS.events_stream
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Issue 14's targets: ratios to the bare consumer, 100 k stored against empty (each rep), CPU
# an event, a lone event's publish -> get p99.
TARGET_E2E = 0.35
TARGET_STORED = 0.9
TARGET_CPU_US = 150.0
TARGET_TRICKLE_P99_MS = 15.0


class BenchError(RuntimeError):
    """A phase failed or timed out; the message carries what is known (worker log tail)."""


@dataclass(frozen=True)
class Config:
    events: int
    stored: int
    reps: int
    batch: int
    in_flight: int
    trickle: int
    trickle_rate: float
    integral_floats: bool
    profile: Path | None
    quiet_s: float
    processes: int
    keep: bool = False

    def ingest_timeout(self) -> float:
        """Generous: the whole flood at 100 msg/s, plus start-up slack."""
        return 60.0 + self.events / 100.0


# ----------------------------------------------------------------------------------------- events


def make_event(
    tag: str, i: int, integral_floats: bool = False, occurred_at: datetime | None = None
) -> dict[str, Any]:
    """A ~1.1 KB OK/GREEN feasibility event, shaped like tests/support.event() grown to size.

    ``occurred_at`` defaults to now: events of one run carry increasing times, as in production
    (the ``list`` index sorts by it, so constant times would make its inserts random).

    ``integral_floats`` adds values like ``120.0`` (as the demo events carry): canonical JSON
    then leaves its json.dumps fast path for rfc8785 (see DESIGN.md), a slower ingest.
    """
    stock: list[float] = [120.0, 120.0, 6.0] if integral_floats else [120.5, 120.5, 6.35]
    return {
        "schema": "rmos.run_event.v1",
        "event_id": f"{tag}-{i:07d}",
        "source": SOURCE,
        "mode": "rosette",
        "tool_id": "saw-0.8mm",
        "event_type": "feasibility",
        "status": "OK",
        "occurred_at": utc_text(occurred_at or datetime.now(UTC)),
        "engine_id": "feasibility-core",
        "engine_version": "2.3.1",
        "toolchain_version": "cam-4.2.0",
        "material_id": "maple-1.5",
        "machine_id": "cnc-shapeoko-4",
        "workflow_session_id": f"ws-{i // 50:05d}",
        "config_fingerprint": "cfg-7d1e9a2c",
        "post_processor_id": "grbl-1.1",
        "feasibility": {
            "max_depth_mm": 1.25,
            "min_wall_mm": 0.9,
            "ok": True,
            "spindle_rpm": 18000,
            "feed_mm_min": 1200 + i % 300,
            "passes": 3,
            "stock_mm": stock,
        },
        "decision": {"risk_level": "GREEN", "score": 90, "warnings": ["inner ring near tool"]},
        "request": {
            "design": {
                "rings": 7,
                "outer_diameter_mm": 110.5,
                "inner_diameter_mm": 38.25,
                "pattern": "herringbone",
                "segments": 24 + i % 8,
            },
            "context": {"material_id": "maple-1.5", "tool_id": "saw-0.8mm", "operator": "bench"},
        },
        "outputs": {
            "gcode_path": f"jobs/{i:07d}/rosette.nc",
            "opplan_path": f"jobs/{i:07d}/op.json",
        },
        "notes": "benchmark event shaped like a production feasibility run",
    }


@dataclass(frozen=True, slots=True)
class Prepared:
    """One event, encoded before any clock starts."""

    msg_id: str
    payload: bytes
    run_id: str


def mixed_event(tag: str, i: int, occurred_at: datetime, tools: Sequence[str]) -> dict[str, Any]:
    """``make_event``'s event with a spread of ``tools`` and statuses: 80 % OK (GREEN,
    feasibility present), 15 % ERROR, 5 % BLOCKED; never wanting an explanation (so the worker's
    sweeps leave the store alone)."""
    event = make_event(tag, i, occurred_at=occurred_at)
    event["tool_id"] = tools[i % len(tools)]
    kind = (i // len(tools)) % 20
    if kind < 3:
        event["status"], event["decision"]["risk_level"] = "ERROR", "ERROR"
    elif kind == 3:
        event["status"], event["decision"]["risk_level"] = "BLOCKED", "RED"
    event["explain"] = False
    return event


def prepare(tag: str, n: int, integral_floats: bool) -> list[Prepared]:
    out = []
    start = datetime.now(UTC)
    for i in range(n):
        event = make_event(tag, i, integral_floats, start + timedelta(microseconds=i))
        msg_id = f"{SOURCE}:{event['event_id']}"
        run_id = derive_run_id(SOURCE, event["event_id"])
        out.append(Prepared(msg_id, json.dumps(event).encode(), run_id))
    return out


def stored_bytes(data_dir: Path, run_ids: Sequence[str]) -> dict[str, bytes]:
    """The stored bytes of those of ``run_ids`` that the worker has stored, read behind its
    back: their places in ``log.sqlite`` and the segments (or the run files of the layout
    before segments, for a before/after run against an older commit)."""
    if (data_dir / "runs").is_dir():
        found = {}
        for run_id in run_ids:
            with contextlib.suppress(FileNotFoundError):
                found[run_id] = (data_dir / "runs" / run_id[4:6] / f"{run_id}.json").read_bytes()
        return found
    from worker.store.sqlite_file import select_in

    query = "SELECT run_id, segment, offset, length FROM places WHERE run_id IN"
    with contextlib.closing(sqlite3.connect(data_dir / "log.sqlite")) as db:
        places = {row[0]: row[1:] for row in select_in(db, query, run_ids)}
    found = {}
    for run_id, (segment, offset, length) in places.items():
        with (data_dir / "segments" / f"{segment:08d}.jsonl").open("rb") as f:
            f.seek(offset)
            found[run_id] = f.read(length)
    return found


# ------------------------------------------------------------------------------------ accounting


def cpu_seconds(pid: int | None, part: str = "all") -> float:
    """CPU of a process (all its threads) so far; NaN when it is gone. ``part``: ``all`` (user
    + system), ``sys`` (system: in the kernel) or ``loop`` (user + system of its main thread,
    which runs the event loop)."""
    if pid is None:
        return math.nan
    stat = f"/proc/{pid}/task/{pid}/stat" if part == "loop" else f"/proc/{pid}/stat"
    try:
        fields = Path(stat).read_text().rpartition(")")[2].split()
    except OSError:
        return math.nan
    user, system = int(fields[11]), int(fields[12])
    return (system if part == "sys" else user + system) / CLK_TCK


def system_cpu() -> tuple[float, float]:
    """(busy, iowait) CPU seconds of the whole machine so far."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, iowait, irq, softirq, steal = values
    return (user + nice + system + irq + softirq + steal) / CLK_TCK, iowait / CLK_TCK


@dataclass
class CpuMeter:
    """CPU seconds of named processes, the rest of the machine and iowait, over one window."""

    pids: dict[str, int | None]
    _start: dict[str, float] = field(default_factory=dict)
    used: dict[str, float] = field(default_factory=dict)

    def _sample(self) -> dict[str, float]:
        busy, iowait = system_cpu()
        sample = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        if (worker := self.pids.get("worker")) is not None:  # parts of it, not processes
            sample[":loop"] = cpu_seconds(worker, "loop")
            sample[":sys"] = cpu_seconds(worker, "sys")
        sample["_busy"], sample["iowait"] = busy, iowait
        return sample

    def start(self) -> None:
        self._start = self._sample()

    def stop(self) -> dict[str, float]:
        end = self._sample()
        self.used = {k: end[k] - self._start[k] for k in end}
        mine = sum(v for k, v in self.used.items() if k in self.pids and not math.isnan(v))
        self.used["others"] = max(0.0, self.used.pop("_busy") - mine)
        return self.used


class SyncfsCounter:
    """Counts the syncfs(2) calls of one process with ``perf stat`` (a tracepoint: no slowdown)."""

    def __init__(self, pid: int | None, out: Path) -> None:
        self._pid = pid
        self._out = out
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        perf = shutil.which("perf")
        if perf is None or self._pid is None:
            return
        self._proc = await asyncio.create_subprocess_exec(
            perf, "stat", "-x", ",", "-e", "syscalls:sys_enter_syncfs",
            "-p", str(self._pid), "-o", str(self._out),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await asyncio.sleep(0.3)  # let it attach (the worker is idle meanwhile)

    async def stop(self) -> int | None:
        if self._proc is None:
            return None
        if self._proc.returncode is None:
            self._proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(self._proc.wait(), 10.0)
        except TimeoutError:
            self._proc.kill()
            await self._proc.wait()
            return None
        with contextlib.suppress(OSError, ValueError):
            for line in self._out.read_text().splitlines():
                if "sys_enter_syncfs" in line:
                    return int(line.split(",", 1)[0])
        return None


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def median(values: Sequence[float]) -> float:
    clean = [v for v in values if not math.isnan(v)]
    return statistics.median(clean) if clean else math.nan


# ----------------------------------------------------------------------------------- processes


READY_TIMEOUT = 60.0  # spawn -> every process of the worker ready


def cpu_pids(worker: WorkerProcess) -> dict[str, int | None]:
    """The processes whose CPU is the worker's, for ``CpuMeter``: the first (``worker``), then
    its siblings (``worker2``, ...) once it has started them."""
    pids: dict[str, int | None] = {"worker": worker.pid}
    pids.update({f"worker{i}": pid for i, pid in enumerate(worker.pids()[1:], 2)})
    return pids


def problems(worker: WorkerProcess) -> list[str]:
    """The worker's log lines at WARNING or above, and traceback heads."""
    if not worker.log_path.exists():
        return []
    pattern = re.compile(r" (WARNING|ERROR|CRITICAL) |^Traceback")
    lines = worker.log_path.read_text(errors="replace").splitlines()
    return [line for line in lines if pattern.search(line)]


@contextlib.asynccontextmanager
async def nats_server(store_dir: Path) -> AsyncIterator[NatsServer]:
    server = NatsServer(store_dir)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def connection(url: str) -> AsyncIterator[Client]:
    """One URL, or a cluster's comma-separated list (as ``NatsCluster.url`` gives it)."""
    nc = await nats.connect(
        servers(url), allow_reconnect=False, connect_timeout=5, name="ingest-bench"
    )
    try:
        yield nc
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 10.0)


@dataclass
class Findings:
    """What the worker logs said, across every run of it."""

    lines: Counter[str] = field(default_factory=Counter)
    exit_codes: list[int | None] = field(default_factory=list)
    stop_s: list[float] = field(default_factory=list)

    def add(self, worker: WorkerProcess, code: int | None, stop_s: float) -> None:
        self.exit_codes.append(code)
        self.stop_s.append(stop_s)
        for line in problems(worker):
            # strip the timestamp so that repeats count together
            self.lines[re.sub(r"^\S+ \S+ ", "", line)[:300]] += 1


FINDINGS = Findings()


@contextlib.asynccontextmanager
async def running_worker(
    url: str,
    data_dir: Path,
    log_path: Path,
    processes: int = 1,
    env: Mapping[str, str] | None = None,
    module: str = "worker.cli",
) -> AsyncIterator[WorkerProcess]:
    """``worker.testing.WorkerProcess`` started (not waited for: ``wait_ready``), a group of
    ``processes``, tied to this process's life; ``env`` adds to the inherited environment (e.g.
    ``RMOS_STORE``), ``module`` another entry point (``bench/log_bench.py``'s unlogged worker)."""
    worker = WorkerProcess(
        url, data_dir, env, module, ROOT, log_path=log_path, processes=processes,
        die_with_parent=True,
    )  # fmt: skip
    await worker.start()
    ok = False
    try:
        yield worker
        ok = True
    finally:
        started = time.perf_counter()
        code = await worker.stop()
        if code == -signal.SIGKILL:
            print("  ! worker ignored SIGTERM for 30s: killed", flush=True)
        FINDINGS.add(worker, code, time.perf_counter() - started)
        if not ok:
            print(f"  ! worker log tail ({log_path}):\n{worker.log(4000)}", flush=True)


# ------------------------------------------------------------------------------------ publishing


async def publish_all(
    nc: Client, events: Sequence[Prepared], in_flight: int, timeout: float
) -> tuple[list[int], int]:
    """Publish with ``publish_async`` (at most ``in_flight`` unacked); wait for every PubAck.

    Returns the wall-clock publish time (ns) of each event and the last stream sequence.
    """
    js = nc.jetstream(publish_async_max_pending=in_flight)
    subject = SUBJECTS.event(SOURCE)
    sent_ns: list[int] = []
    futures: list[asyncio.Future[PubAck]] = []
    async with asyncio.timeout(timeout):
        for event in events:
            sent_ns.append(time.time_ns())
            future = await js.publish_async(
                subject, event.payload, wait_stall=timeout, headers={"Nats-Msg-Id": event.msg_id}
            )
            futures.append(future)
        acks = await asyncio.gather(*futures)
    duplicates = sum(1 for ack in acks if ack.duplicate)
    if duplicates:
        raise BenchError(f"{duplicates} events were duplicates of earlier ones (reused ids?)")
    return sent_ns, max(ack.seq for ack in acks)


async def wait_settled(js: JetStreamContext, last_seq: int, timeout: float, poll: float) -> float:
    """``perf_counter()`` when the consumer has acked everything up to ``last_seq``."""
    async with asyncio.timeout(timeout):
        while True:
            info = await js.consumer_info(STREAM, EVENTS_CONSUMER)
            floor = info.ack_floor.stream_seq if info.ack_floor else 0
            if info.num_pending == 0 and info.num_ack_pending == 0 and floor >= last_seq:
                return time.perf_counter()
            await asyncio.sleep(poll)


async def first_delivery(js: JetStreamContext, worker: WorkerProcess, timeout: float) -> float:
    """``perf_counter()`` when the consumer first delivered a message (polled every 5 ms)."""
    async with asyncio.timeout(timeout):
        while True:
            worker.check_alive()
            with contextlib.suppress(nats.errors.Error):
                info = await js.consumer_info(STREAM, EVENTS_CONSUMER)
                if info.delivered is not None and info.delivered.stream_seq > 0:
                    return time.perf_counter()
            await asyncio.sleep(0.005)


async def dlq_count(js: JetStreamContext) -> int:
    try:
        info = await js.stream_info(SUBJECTS.dlq_stream)
    except nats.errors.Error:
        return 0
    return info.state.messages


@contextlib.contextmanager
def stored_probe(data_dir: Path) -> Iterator[Callable[[str], bool]]:
    """Whether a run is stored, asked of the data dir many times (one connection)."""
    if (data_dir / "runs").is_dir():
        yield lambda run_id: (data_dir / "runs" / run_id[4:6] / f"{run_id}.json").exists()
        return
    with contextlib.closing(sqlite3.connect(data_dir / "log.sqlite")) as db:
        query = "SELECT 1 FROM places WHERE run_id = ?"
        yield lambda run_id: db.execute(query, (run_id,)).fetchone() is not None


def missing_runs(data_dir: Path, events: Sequence[Prepared]) -> list[str]:
    run_ids = [e.run_id for e in events]
    stored = stored_bytes(data_dir, run_ids)
    return [r for r in run_ids if r not in stored]


async def all_files(data_dir: Path, events: Sequence[Prepared], timeout: float) -> None:
    """Every run is stored; the consumer said it acked them all, so this should be at once."""
    deadline = time.perf_counter() + timeout
    missing = missing_runs(data_dir, events)
    while missing and time.perf_counter() < deadline:
        await asyncio.sleep(0.1)
        missing = [r for r in missing if r not in stored_bytes(data_dir, missing)]
    if missing:
        raise BenchError(f"{len(missing)} runs missing after the consumer settled")


def flood_latencies(
    data_dir: Path, events: Sequence[Prepared], sent_ns: Sequence[int]
) -> list[float]:
    """Milliseconds from publish to the run's ``recorded_at_utc`` (when the worker built it).

    That is before the commit's two flushes and the ack: a lower bound of the durable latency,
    short by one group commit (seen in the trickle figures). Under a flood it is dominated by
    the backlog the publisher builds.
    """
    stored = stored_bytes(data_dir, [e.run_id for e in events])
    recorded = {
        run_id: datetime.fromisoformat(json.loads(data)["recorded_at_utc"]).timestamp()
        for run_id, data in stored.items()
    }
    return [(recorded[e.run_id] * 1e9 - t) / 1e6 for e, t in zip(events, sent_ns, strict=True)]


# ---------------------------------------------------------------------------------------- phases


@dataclass
class Rep:
    """One repetition of one phase."""

    rate: float
    cpu: dict[str, float] = field(default_factory=dict)  # µs per message
    extra: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        cpu = " ".join(f"{k} {v:.0f}" for k, v in self.cpu.items())
        extra = " ".join(f"{k} {v:,.1f}" for k, v in self.extra.items())
        return f"{self.rate:>9,.0f} msg/s | cpu µs/msg: {cpu} | {extra}"


def per_message(used: dict[str, float], n: int) -> dict[str, float]:
    return {k: v / n * 1e6 for k, v in used.items()}


async def bare_rep(cfg: Config, work: Path, events: Sequence[Prepared]) -> Rep:
    """Phase 1: bare nats-py ``fetch(batch)`` + ack of a pre-published backlog."""
    async with nats_server(work / "nats") as server, connection(server.url) as nc:
        return await bare_consume(cfg, nc, {"nats": server.pid}, events)


async def bare_consume(
    cfg: Config,
    nc: Client,
    nats_pids: Mapping[str, int | None],
    events: Sequence[Prepared],
    replicas: int = 1,
) -> Rep:
    """Phase 1 on any server or cluster ``nc`` reaches: the streams (``replicas``) and the
    worker's durable consumer declared, N events published, then fetched and acked until
    settled. ``nats_pids`` names the server processes whose CPU is counted (summed as nats)."""
    js = nc.jetstream()
    await ensure_streams(js, SUBJECTS, replicas)
    await ensure_consumer(js, STREAM, events_consumer_config(SETTINGS))
    pids = {"bench": os.getpid(), **nats_pids}
    publishing = CpuMeter(pids)
    publishing.start()
    publish_started = time.perf_counter()
    _, last_seq = await publish_all(nc, events, cfg.in_flight, cfg.ingest_timeout())
    publish_s = time.perf_counter() - publish_started
    pub = per_message(nats_summed(publishing.stop(), nats_pids), len(events))
    sub = await js.pull_subscribe_bind(durable=EVENTS_CONSUMER, stream=STREAM)
    meter = CpuMeter(pids)
    meter.start()
    started = time.perf_counter()
    got = 0
    async with asyncio.timeout(cfg.ingest_timeout()):
        while got < len(events):
            try:
                msgs = await sub.fetch(cfg.batch, timeout=1.0)
            except nats.errors.TimeoutError:
                continue
            for msg in msgs:
                await msg.ack()
            got += len(msgs)
    ended = await wait_settled(js, last_seq, 30.0, poll=0.002)
    used = nats_summed(meter.stop(), nats_pids)
    wall = ended - started
    cpu = per_message({k: used[k] for k in ("bench", "nats")}, len(events))
    extra = {
        "s": wall,
        "others cores": used["others"] / wall,
        "publish-only msg/s": len(events) / publish_s,
        "publish-only bench µs": pub["bench"],
        "publish-only nats µs": pub["nats"],
    }
    return Rep(len(events) / wall, cpu, extra)


def nats_summed(used: dict[str, float], nats_pids: Mapping[str, int | None]) -> dict[str, float]:
    """``used`` with the CPU of every server process in ``nats_pids`` summed as ``nats``."""
    out = {k: v for k, v in used.items() if k not in nats_pids}
    out["nats"] = sum(used[k] for k in nats_pids)
    return out


async def populate(data_dir: Path, n: int, tag: str, integral_floats: bool) -> float:
    """Store ``n`` runs with the real group-commit path, 1000 a commit; returns seconds taken.

    Artifacts are built once from a real event, then copied with new ids and increasing times
    (older than any event published later): the ingest path never reads an existing run (only
    duplicates and parents), so their hashes are not redone.
    """
    started = time.perf_counter()
    raw = json.dumps(make_event(tag, 0, integral_floats)).encode()
    checked = check_event(raw, subject_source=SOURCE, max_bytes=SETTINGS.max_event_bytes)
    now = datetime.now(UTC)
    template = build_artifact(checked, parent=None, stored_at=now, now=now)
    first = now - timedelta(seconds=n / 1000)
    store = FileStore(data_dir)
    await store.open()
    try:
        for start in range(0, n, 1000):
            runs = []
            for i in range(start, min(n, start + 1000)):
                event_id = f"{tag}-{i:07d}"
                run_id = derive_run_id(SOURCE, event_id)
                created = utc_text(first + timedelta(milliseconds=i))
                artifact = {**template, "run_id": run_id, "event_id": event_id}
                artifact["created_at_utc"] = created
                runs.append(NewRun(run_id, artifact))
            results = await store.create_runs(runs)
            # a list of bool, or of ``Created`` since the store reports the holder too
            if not all(getattr(r, "created", r) for r in results):
                raise BenchError("pre-populating: a run already existed")
    finally:
        store.close()
    return time.perf_counter() - started


async def ingest_rep(
    cfg: Config, work: Path, events: Sequence[Prepared], stored: int, processes: int = 1
) -> Rep:
    """Phases 2, 4 and 5: the worker ingesting a concurrent flood (plus the trickle when empty
    and single)."""
    data_dir = work / "data"
    extra: dict[str, float] = {}
    if stored:
        extra["populate s"] = await populate(data_dir, stored, "stored", cfg.integral_floats)
    async with (
        nats_server(work / "nats") as server,
        running_worker(server.url, data_dir, work / "worker.log", processes) as worker,
        connection(server.url) as nc,
    ):
        client = RunsClient(nc, SUBJECTS, timeout=5.0)
        extra["ready s"] = await worker.wait_ready(client, READY_TIMEOUT)
        rep = await flood(cfg, nc, server, worker, events, work)
        rep.extra = {**extra, **rep.extra}
        if not stored and processes == 1 and cfg.trickle:
            tag = f"trickle-{work.name}"
            trickle_events = prepare(tag, cfg.trickle, cfg.integral_floats)
            rep.extra.update(await trickle(cfg, client, data_dir, trickle_events))
        if dead := await dlq_count(nc.jetstream()):
            raise BenchError(f"{dead} dead letters during the run")
    return rep


async def flood(
    cfg: Config,
    nc: Client,
    server: NatsServer,
    worker: WorkerProcess,
    events: Sequence[Prepared],
    work: Path,
) -> Rep:
    """Publish everything at once; time it until the last run file is durable and acked."""
    counter = SyncfsCounter(worker.pid if worker.processes == 1 else None, work / "perf-sync.csv")
    await counter.start()
    meter = CpuMeter({**cpu_pids(worker), "nats": server.pid, "bench": os.getpid()})
    meter.start()
    started = time.perf_counter()
    sent_ns, last_seq = await publish_all(nc, events, cfg.in_flight, cfg.ingest_timeout())
    published = time.perf_counter()
    try:
        ended = await wait_settled(nc.jetstream(), last_seq, cfg.ingest_timeout(), poll=0.01)
    except TimeoutError:
        worker.check_alive()
        raise BenchError(f"worker did not settle:\n{worker.log(4000)}") from None
    used = meter.stop()
    syncfs = await counter.stop()
    await all_files(worker.data_dir, events, 10.0)
    wall = ended - started
    latencies = flood_latencies(worker.data_dir, events, sent_ns)
    extra = {
        "s": wall,
        "publish msg/s": len(events) / (published - started),
        "p50 ms": percentile(latencies, 50),
        "p99 ms": percentile(latencies, 99),
        "worker cores": worker_cpu(used) / wall,
        "iowait s": used["iowait"],
        "others cores": used["others"] / wall,
    }
    if syncfs:
        extra["syncfs"] = syncfs
        extra["avg batch"] = len(events) / (syncfs / 2)
    cpu = per_message(
        {"worker": worker_cpu(used), **worker_split(used), "nats": used["nats"],
         "bench": used["bench"]},
        len(events),
    )  # fmt: skip
    return Rep(len(events) / wall, cpu, extra)


async def trickle(
    cfg: Config, client: RunsClient, data_dir: Path, events: Sequence[Prepared]
) -> dict[str, float]:
    """Publish one event at a time at a steady rate; time publish -> PubAck, file, ``api.get``."""
    loop = asyncio.get_running_loop()
    subject = SUBJECTS.event(SOURCE)

    async def one(event: Prepared) -> tuple[float, float, float]:
        t0 = time.perf_counter()
        await client.publish_raw(subject, event.payload, msg_id=event.msg_id)
        t_ack = time.perf_counter()
        # polling the data dir costs the worker little, unlike polling api.get
        while not is_stored(event.run_id):  # noqa: ASYNC110 - no event to wait on
            await asyncio.sleep(0.0005)
        t_file = time.perf_counter()
        await client.get(event.run_id)
        t_get = time.perf_counter()
        return (t_ack - t0) * 1e3, (t_file - t0) * 1e3, (t_get - t0) * 1e3

    tasks = []
    with stored_probe(data_dir) as is_stored:
        async with asyncio.timeout(30.0 + len(events) / cfg.trickle_rate):
            start = loop.time()
            for i, event in enumerate(events):
                await asyncio.sleep(max(0.0, start + i / cfg.trickle_rate - loop.time()))
                tasks.append(asyncio.create_task(one(event)))
            results = await asyncio.gather(*tasks)
    acks, files, gets = zip(*results, strict=True)
    return {
        "trickle pubAck p50 ms": percentile(acks, 50),
        "trickle file p50 ms": percentile(files, 50),
        "trickle get p50 ms": percentile(gets, 50),
        "trickle get p99 ms": percentile(gets, 99),
    }


async def backlog_rep(
    cfg: Config,
    work: Path,
    events: Sequence[Prepared],
    processes: int = 1,
    module: str = "worker.cli",
) -> Rep:
    """2b and 5b: the worker draining a backlog published before it started (no publisher)."""
    data_dir = work / "data"
    async with nats_server(work / "nats") as server, connection(server.url) as nc:
        js = nc.jetstream()
        await ensure_streams(js, SUBJECTS)  # what the worker declares at start-up: a no-op then
        await ensure_consumer(js, STREAM, events_consumer_config(SETTINGS))
        _, last_seq = await publish_all(nc, events, cfg.in_flight, cfg.ingest_timeout())
        log_path = work / "worker.log"
        async with running_worker(
            server.url, data_dir, log_path, processes, module=module
        ) as worker:
            started = await first_delivery(js, worker, 60.0)
            meter = CpuMeter({**cpu_pids(worker), "nats": server.pid, "bench": os.getpid()})
            meter.start()
            try:
                ended = await wait_settled(js, last_seq, cfg.ingest_timeout(), poll=0.01)
            except TimeoutError:
                worker.check_alive()
                raise BenchError(f"worker did not settle:\n{worker.log(4000)}") from None
            used = meter.stop()
            await all_files(data_dir, events, 10.0)
    wall = ended - started
    cpu = per_message(
        {"worker": worker_cpu(used), **worker_split(used), "nats": used["nats"]}, len(events)
    )
    return Rep(len(events) / wall, cpu, {"s": wall, "worker cores": worker_cpu(used) / wall})


def worker_cpu(used: dict[str, float]) -> float:
    """CPU seconds of every worker process together (the first and its siblings)."""
    return sum(v for k, v in used.items() if k.startswith("worker") and not math.isnan(v))


def worker_split(used: dict[str, float]) -> dict[str, float]:
    """Where a lone worker process's CPU went: ``w.loop`` its event loop's thread (checking,
    building, nats-py, settling), ``w.sys`` its time in the kernel (all threads); the rest is
    the commit threads' Python and SQLite. Empty with sibling processes (the split is of the
    first only)."""
    if any(k.startswith("worker") and k != "worker" for k in used):
        return {}
    return {"w.loop": used[":loop"], "w.sys": used[":sys"]}


# ------------------------------------------------------------------------------------- profiling


def find_py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


async def profile_rep(cfg: Config, work: Path, events: Sequence[Prepared]) -> None:
    """An extra, unmeasured flood with py-spy sampling the worker; prints its hottest frames."""
    assert cfg.profile is not None
    py_spy = find_py_spy()
    if py_spy is None:
        print("  ! py-spy not found: pip install py-spy", flush=True)
        return
    cfg.profile.mkdir(parents=True, exist_ok=True)
    out = cfg.profile / "worker-flood.txt"
    async with (
        nats_server(work / "nats") as server,
        running_worker(server.url, work / "data", work / "worker.log") as worker,
        connection(server.url) as nc,
    ):
        await worker.wait_ready(RunsClient(nc, SUBJECTS), READY_TIMEOUT)
        spy = await asyncio.create_subprocess_exec(
            py_spy, "record", "--pid", str(worker.pid), "--format", "raw", "--rate", "250",
            "--nonblocking", "--threads", "--idle", "--output", str(out),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await asyncio.sleep(1.0)
        rep = await flood(cfg, nc, server, worker, events, work)
        spy.send_signal(signal.SIGINT)
        await asyncio.wait_for(spy.wait(), 30.0)
    print(f"  profiled flood (py-spy attached): {rep.line()}")
    print_profile(out)


def print_profile(path: Path, top: int = 12) -> None:
    """Wall-clock shares per thread (py-spy ``--idle``): leaf frames, and our own frames."""
    leaves: dict[str, Counter[str]] = {}
    ours: dict[str, Counter[str]] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            head, _, rest = stack.partition(";")
            thread = head.partition(": ")[2] or head
            frames = rest.split(";")
            leaves.setdefault(thread, Counter())[frames[-1]] += int(count)
            for frame in {f for f in frames if "(worker/" in f or "(contracts/" in f}:
                ours.setdefault(thread, Counter())[frame] += int(count)
    if not leaves:
        print(f"  ! no samples in {path}")
        return
    print(f"  py-spy samples (wall clock, idle included) in {path}:")
    for thread, counts in sorted(leaves.items(), key=lambda kv: -kv[1].total()):
        total = counts.total()
        print(f"  thread {thread}: {total} samples; leaf frames:")
        for frame, n in counts.most_common(top):
            print(f"    {n / total:6.1%}  {frame[:140]}")
        print(f"  thread {thread}: project frames, inclusive:")
        for frame, n in ours.get(thread, Counter()).most_common(top):
            print(f"    {n / total:6.1%}  {frame[:140]}")


# ----------------------------------------------------------------------------------------- report


@dataclass
class Results:
    bare: list[Rep] = field(default_factory=list)
    empty: list[Rep] = field(default_factory=list)
    backlog: list[Rep] = field(default_factory=list)
    stored: list[Rep] = field(default_factory=list)
    group: list[Rep] = field(default_factory=list)
    group_backlog: list[Rep] = field(default_factory=list)


def rates(reps: Sequence[Rep]) -> str:
    return " / ".join(f"{r.rate:,.0f}" for r in reps)


def extras(reps: Sequence[Rep], key: str) -> list[float]:
    return [r.extra.get(key, math.nan) for r in reps]


def verdict(value: float, target: float, *, at_most: bool = False) -> str:
    if math.isnan(value):
        return "n/a"
    return "PASS" if (value <= target if at_most else value >= target) else "FAIL"


def table_rows(res: Results, cfg: Config) -> Iterator[tuple[str, str, str, str]]:
    bare, empty = median([r.rate for r in res.bare]), median([r.rate for r in res.empty])
    stored, backlog = median([r.rate for r in res.stored]), median([r.rate for r in res.backlog])
    yield (f"(1) bare nats-py fetch({cfg.batch})+ack", f"{bare:,.0f} msg/s", rates(res.bare), "")
    yield ("(2) worker e2e, empty store", f"{empty:,.0f} msg/s", rates(res.empty), "")
    p50, p99 = median(extras(res.empty, "p50 ms")), median(extras(res.empty, "p99 ms"))
    yield ("    flood latency p50 / p99 (recorded)", f"{p50:,.0f} / {p99:,.0f} ms", "", "")
    if cfg.trickle:
        t50 = median(extras(res.empty, "trickle get p50 ms"))
        t99 = median(extras(res.empty, "trickle get p99 ms"))
        label = f"    trickle {cfg.trickle} @{cfg.trickle_rate:g}/s publish->get p50 / p99"
        target = f"p99 <= {TARGET_TRICKLE_P99_MS:g} ms"
        verdict_p99 = verdict(t99, TARGET_TRICKLE_P99_MS, at_most=True)
        yield (label, f"{t50:,.1f} / {t99:,.1f} ms", target, verdict_p99)
    yield ("(2b) worker drain of a backlog", f"{backlog:,.0f} msg/s", rates(res.backlog), "")
    ratio = empty / bare
    yield (
        "(3) ratio (2)/(1)",
        f"{ratio:.2f}",
        f"target >= {TARGET_E2E}",
        verdict(ratio, TARGET_E2E),
    )
    ratio = backlog / bare
    label = f"target >= {TARGET_E2E} (no publisher)"
    yield ("    ratio (2b)/(1)", f"{ratio:.2f}", label, verdict(ratio, TARGET_E2E))
    for name, reps in (("e2e", res.empty), ("backlog", res.backlog)):
        cpu = median([r.cpu.get("worker", math.nan) for r in reps])
        target = f"target <= {TARGET_CPU_US:g}"
        verdict_cpu = verdict(cpu, TARGET_CPU_US, at_most=True)
        yield (f"    worker CPU an event, {name}", f"{cpu:,.0f} µs", target, verdict_cpu)
    yield (f"(4) worker e2e, {cfg.stored:,} stored", f"{stored:,.0f} msg/s", rates(res.stored), "")
    p50, p99 = median(extras(res.stored, "p50 ms")), median(extras(res.stored, "p99 ms"))
    yield ("    flood latency p50 / p99 (recorded)", f"{p50:,.0f} / {p99:,.0f} ms", "", "")
    ratio = stored / empty
    each = [s.rate / e.rate for s, e in zip(res.stored, res.empty, strict=False)]
    shown = " / ".join(f"{r:.2f}" for r in each)
    label = f"target >= {TARGET_STORED} each rep"
    yield (
        "    ratio (4)/(2), reps",
        f"{ratio:.2f}, {shown}",
        label,
        verdict(min(each, default=math.nan), TARGET_STORED),
    )
    if res.group:
        group = median([r.rate for r in res.group])
        drain = median([r.rate for r in res.group_backlog])
        n = cfg.processes
        yield (f"(5) --processes {n} e2e, empty", f"{group:,.0f} msg/s", rates(res.group), "")
        yield (
            f"(5b) --processes {n} backlog drain",
            f"{drain:,.0f} msg/s",
            rates(res.group_backlog),
            "",
        )
        yield ("    ratios (5)/(1), (5)/(2)", f"{group / bare:.2f}, {group / empty:.2f}", "", "")
        yield (
            "    ratios (5b)/(1), (5b)/(2b)",
            f"{drain / bare:.2f}, {drain / backlog:.2f}",
            "",
            "",
        )


def cpu_rows(res: Results) -> Iterator[str]:
    for name, reps in (("bare", res.bare), ("empty", res.empty), ("backlog", res.backlog),
                       ("stored", res.stored), ("group", res.group),
                       ("group-bl", res.group_backlog)):  # fmt: skip
        if not reps:
            continue
        keys = list(reps[0].cpu)
        cpu = ", ".join(f"{k} {median([r.cpu.get(k, math.nan) for r in reps]):.0f}" for k in keys)
        more = []
        for key in ("worker cores", "others cores", "iowait s", "avg batch", "ready s"):
            value = median(extras(reps, key))
            if not math.isnan(value):
                more.append(f"{key} {value:.2f}")
        yield f"  {name:<8} µs/msg: {cpu} | " + ", ".join(more)


def print_report(res: Results, cfg: Config) -> None:
    rows = list(table_rows(res, cfg))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    print(f"\n=== medians of {cfg.reps} ({cfg.events:,} events a run, batch {cfg.batch}) ===")
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print("\nCPU per message (medians; 'others' = the rest of the machine, in cores):")
    for line in cpu_rows(res):
        print(line)
    print_findings()


def print_findings() -> None:
    codes = Counter(FINDINGS.exit_codes)
    slowest = max(FINDINGS.stop_s, default=math.nan)
    print(f"\nworker exits: {dict(codes)}; slowest graceful stop {slowest:.1f}s")
    if not FINDINGS.lines:
        print("worker logs: no WARNING/ERROR lines")
        return
    print("worker log lines at WARNING or above (count x line):")
    for line, count in FINDINGS.lines.most_common(15):
        print(f"  {count:>4} x {line}")


# ------------------------------------------------------------------------------------------- main


def environment_notes(tmp: Path) -> None:
    same = os.stat(tmp).st_dev == os.stat(ROOT).st_dev
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, load {' '.join(load)}; "
        f"temp dir {tmp} ({'same device as' if same else 'NOT on the device of'} {ROOT})",
        flush=True,
    )
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        [*git, "status", "--short", "--", "worker", "contracts"], capture_output=True, text=True
    )
    changed = " ".join(line[3:] for line in dirty.stdout.splitlines()) or "none"
    print(f"code: commit {head.stdout.strip()}, uncommitted in worker/contracts: {changed}")
    note_code_change("start")
    print(f"sources fingerprint {CODE['seen']}")
    size = len(prepare("probe", 1, False)[0].payload)
    print(f"event size {size} bytes; worker batch_size {SETTINGS.batch_size}", flush=True)
    print(
        f"creating a 1 KB file here: {file_creation_us(tmp / 'calibration'):.1f} µs of CPU "
        "(median of 2,000; several times the usual ~15-20 means recently freed inodes are "
        "being skipped: see bench/README.md)",
        flush=True,
    )


async def wait_quiet(limit_s: float, threshold: float = 0.25) -> None:
    """Wait (at most ``limit_s``) for a second in which the machine uses < ``threshold`` cores.

    Other people's tests share these 2 cores; a phase that starts beside them measures them.
    """
    deadline = time.perf_counter() + limit_s
    busy = math.nan
    while time.perf_counter() < deadline:
        before = system_cpu()[0]
        await asyncio.sleep(1.0)
        busy = system_cpu()[0] - before
        if busy < threshold:
            return
    if limit_s > 0:
        print(f"  ! machine busy ({busy:.2f} cores) after {limit_s:.0f}s: going on", flush=True)


def code_fingerprint() -> str:
    """A digest of the worker's and the contracts' sources: others edit them while this runs."""
    digest = hashlib.sha256()
    for path in sorted([*ROOT.glob("worker/**/*.py"), *ROOT.glob("contracts/**/*.py")]):
        with contextlib.suppress(OSError):
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


CODE = {"seen": ""}


def note_code_change(phase: str) -> None:
    now = code_fingerprint()
    if CODE["seen"] and now != CODE["seen"]:
        print(f"  ! worker/contracts sources changed before {phase} ({now})", flush=True)
    CODE["seen"] = now


async def one_rep(cfg: Config, tmp: Path, rep: int, res: Results) -> None:
    phases: list[tuple[str, list[Rep], Callable[[Path, list[Prepared]], Any]]] = [
        ("bare", res.bare, lambda w, ev: bare_rep(cfg, w, ev)),
        ("empty", res.empty, lambda w, ev: ingest_rep(cfg, w, ev, 0)),
        ("backlog", res.backlog, lambda w, ev: backlog_rep(cfg, w, ev)),
        ("stored", res.stored, lambda w, ev: ingest_rep(cfg, w, ev, cfg.stored)),
    ]
    if cfg.processes > 1:
        phases += [
            ("group", res.group, lambda w, ev: ingest_rep(cfg, w, ev, 0, cfg.processes)),
            ("group-bl", res.group_backlog, lambda w, ev: backlog_rep(cfg, w, ev, cfg.processes)),
        ]
    for name, bucket, run in phases:
        work = tmp / f"{name}-{rep}"
        work.mkdir()
        events = prepare(f"{name}{rep}", cfg.events, cfg.integral_floats)
        note_code_change(f"rep {rep} {name}")
        await wait_quiet(cfg.quiet_s)
        # Kept until the end: on this ext4 (no journal) inodes freed in the last ~30 s are
        # skipped one by one when a new inode is allocated, so deleting a phase's files
        # would slow the next phase's file creation (seen with perf: recently_deleted()).
        result: Rep = await run(work, events)
        bucket.append(result)
        print(f"rep {rep} {name:<8}{result.line()}", flush=True)


async def main(cfg: Config) -> int:
    res = Results()

    async def body(tmp: Path) -> None:
        for rep in range(1, cfg.reps + 1):
            await one_rep(cfg, tmp, rep, res)
        if cfg.profile is not None:
            work = tmp / "profile"
            work.mkdir()
            await profile_rep(cfg, work, prepare("profile", cfg.events, cfg.integral_floats))
        print_report(res, cfg)

    return await in_temp_dir("ingest-", body, keep=cfg.keep)


async def in_temp_dir(
    prefix: str, body: Callable[[Path], Awaitable[None]], *, keep: bool = False
) -> int:
    """Run a benchmark's ``body`` in a fresh dir under TMP_PARENT, removed after unless ``keep``.

    0 when it completes; 1 when a phase fails or times out, the reason and the workers' findings
    printed (every bench script's ``main``).
    """
    TMP_PARENT.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=TMP_PARENT, prefix=prefix))
    try:
        environment_notes(tmp)
        await body(tmp)
    except (BenchError, RunsApiError, WorkerExited) as exc:
        print(f"\nFAILED: {exc}", flush=True)
        print_findings()
        return 1
    except TimeoutError:
        print("\nFAILED: a phase timed out:", flush=True)
        traceback.print_exc(limit=-4)
        print_findings()
        return 1
    finally:
        if keep:
            print(f"kept {tmp} (logs, stores)", flush=True)
        else:
            started = time.perf_counter()
            shutil.rmtree(tmp, ignore_errors=True)
            print(f"removed {tmp} in {time.perf_counter() - started:.1f}s", flush=True)
            with contextlib.suppress(OSError):
                TMP_PARENT.rmdir()  # only when no other run is using it
            await settle_after_delete()
    return 0


# ext4 without a journal: RECENTCY_MIN + RECENTCY_DIRTY (new files dirty the same blocks again)
DELETED_INODES_SKIPPED_S = 360


async def settle_after_delete() -> None:
    """Wait until the inodes just freed are no longer skipped by new files, so the next run
    (a before/after comparison, say) is not measured against this one's deletion.

    ext4 without a journal, as here, makes every new inode step over the inodes freed in the
    last 60 s (5 min while their inode table block is dirty), one by one: after a run's
    tens of thousands of files were removed, creating a file cost several times more for
    minutes, in every process on the file system. Waiting 65 s after a ``sync`` was not
    enough: the next run's new inodes dirty those blocks again, and dirty ones count 6 min."""
    os.sync()
    print(f"waiting {DELETED_INODES_SKIPPED_S + 5} s so that new files stop skipping the freed "
          "inodes (ext4 without a journal; see bench/README.md)", flush=True)  # fmt: skip
    await asyncio.sleep(DELETED_INODES_SKIPPED_S + 5)


def file_creation_us(directory: Path, files: int = 2000) -> float:
    """Median thread CPU of creating a 1 KB file here, µs (kept: removing them would free
    inodes, which slows the next files created; see ``settle_after_delete``)."""
    directory.mkdir()
    data, costs = b"x" * 1024, []
    for i in range(files):
        started = time.thread_time_ns()
        fd = os.open(directory / f"{i}.tmp", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, data)
        os.close(fd)
        costs.append(time.thread_time_ns() - started)
    return statistics.median(costs) / 1000


def parse_args(argv: Sequence[str] | None = None) -> tuple[Config, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, help="events per run (20000)")
    parser.add_argument("--stored", type=int, help="runs stored before (4) (100000)")
    parser.add_argument("--reps", type=int, help="repetitions of each phase (3)")
    parser.add_argument("--quick", action="store_true", help="2000 events, 10k stored, 1 rep")
    parser.add_argument("--batch", type=int, default=SETTINGS.batch_size, help="bare fetch size")
    parser.add_argument("--in-flight", type=int, default=1000, help="publish_async window")
    parser.add_argument("--trickle", type=int, help="trickle events, 0: none (500)")
    parser.add_argument("--trickle-rate", type=float, default=100.0, help="trickle events/s")
    parser.add_argument(
        "--integral-floats", action="store_true", help="events carry 120.0-like values"
    )
    parser.add_argument("--profile", type=Path, help="also py-spy the worker; output dir")
    parser.add_argument(
        "--quiet", type=float, default=30.0, help="wait up to S s for an idle machine per phase"
    )
    parser.add_argument("--timeout", type=float, default=3600.0, help="whole run, seconds")
    parser.add_argument(
        "--processes", type=int, default=os.cpu_count() or 1, help="phase 5's --processes; 1: none"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temp dir (logs, stores): no clean-up wait"
    )
    args = parser.parse_args(argv)
    defaults = (2000, 10_000, 1, 100) if args.quick else (20_000, 100_000, 3, 500)
    for name, default in zip(("events", "stored", "reps", "trickle"), defaults, strict=True):
        if getattr(args, name) is None:  # an explicit flag wins over --quick
            setattr(args, name, default)
    return Config(
        events=args.events,
        stored=args.stored,
        reps=args.reps,
        batch=args.batch,
        in_flight=args.in_flight,
        trickle=args.trickle,
        trickle_rate=args.trickle_rate,
        integral_floats=args.integral_floats,
        profile=args.profile,
        quiet_s=args.quiet,
        processes=args.processes,
        keep=args.keep,
    ), args.timeout


async def bounded(run: Awaitable[int], timeout: float) -> int:
    """A whole benchmark run under one deadline, SIGTERM treated like Ctrl-C (its clean-up runs);
    the exit code: the run's, 2 past the deadline, 130 when interrupted."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        async with asyncio.timeout(timeout):
            return await run
    except TimeoutError:
        print(f"\nFAILED: the whole run exceeded {timeout:.0f}s", flush=True)
        print_findings()
        return 2
    except asyncio.CancelledError:  # SIGTERM or Ctrl-C: everything started was stopped
        print("\nINTERRUPTED", flush=True)
        return 130


if __name__ == "__main__":
    config, total_timeout = parse_args()
    sys.exit(asyncio.run(bounded(main(config), total_timeout)))
