"""Query benchmark (issue 14): ``get`` and ``list`` over NATS with 100k runs stored, against the
bare request–reply round trip measured in the same run. For each store (``files``, then
``jetstream``) it starts a fresh nats-server with JetStream on loopback and the worker as a
subprocess (``python -m worker.cli worker``), publishes ``--runs`` ~1.1 KB events through
JetStream and waits until the worker has acked them all and ``list`` shows every run (the
populate time is printed), then starts a trivial core-NATS responder on ``bench.echo`` in a
separate process (the floor: a request–reply with no worker behind it). The timed phase makes
``--calls`` sequential calls of each kind from one nats-py connection, interleaved (bare, get,
list, bare, ...) so that machine noise hits all kinds alike, after 50 warm-up calls each, each
timed with ``perf_counter_ns``: bare ``nc.request``, ``RunsClient.get`` of a random stored run,
and ``RunsClient.list_page(status="OK", tool_id=<one of 4>, limit=50)`` (always a full page).
It prints p50 / p99 / max per kind, the worker's and nats-server's CPU per call, and the targets:
``get`` p99 ≤ 2 × bare p99, ``list`` p99 ≤ bare p99 + 3 ms; ``--reps`` timed phases per store
(one populate), each rep's line and the medians across reps.

Usage: .venv/bin/python bench/query_bench.py [--quick] [--runs N] [--calls N]
       [--stores files,jetstream] [--reps N] [--jetstream-runs N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import random
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
from ingest_bench import (
    READY_TIMEOUT,
    SOURCE,
    SUBJECTS,
    BenchError,
    CpuMeter,
    Prepared,
    bounded,
    connection,
    dlq_count,
    in_temp_dir,
    median,
    mixed_event,
    nats_server,
    note_code_change,
    percentile,
    print_findings,
    publish_all,
    running_worker,
    wait_quiet,
    wait_settled,
)
from nats.aio.client import Client
from nats.aio.msg import Msg

from contracts.api import ListPage
from contracts.canonical import derive_run_id
from worker.client import RunsApiError, RunsClient
from worker.nats_server import NatsServer
from worker.processes import die_with_parent
from worker.testing import WorkerProcess

SCRIPT = Path(__file__).resolve()
ECHO_SUBJECT = "bench.echo"
ECHO_FLAG = "--echo-responder"
ECHO_REPLY = json.dumps(
    {"ok": True, "run": {"run_id": "run_" + "0" * 32, "status": "OK", "pad": "x" * 200}}
).encode()  # a few hundred bytes, fixed
TOOLS = ("saw-0.8mm", "saw-1.0mm", "vbit-60", "endmill-3mm")
LIST_STATUS = "OK"
LIST_LIMIT = 50
WARMUP = 50
KINDS = ("bare", "get", "list")
STORE_ENV: dict[str, dict[str, str]] = {"files": {}, "jetstream": {"RMOS_STORE": "jetstream"}}
TARGET_GET_RATIO = 2.0
TARGET_LIST_EXTRA_MS = 3.0
CALL_TIMEOUT = 5.0
IDLE_S = 1.0
DECODES = 200


@dataclass(frozen=True)
class Config:
    runs: int
    jetstream_runs: int | None
    calls: int
    reps: int
    stores: tuple[str, ...]
    in_flight: int
    quiet_s: float
    seed: int

    def runs_for(self, store: str) -> int:
        if store == "jetstream" and self.jetstream_runs is not None:
            return self.jetstream_runs
        return self.runs

    def populate_timeout(self, n: int) -> float:
        """Generous: the whole populate at 50 runs/s, plus start-up slack."""
        return 120.0 + n / 50.0

    def timed_timeout(self) -> float:
        """One timed phase: every call at its timeout would be far beyond this."""
        return 120.0 + (self.calls + WARMUP) * len(KINDS) * 0.1


# ----------------------------------------------------------------------------------------- events


def query_events(tag: str, n: int) -> list[Prepared]:
    """``n`` encoded events with increasing times (the newest last, as ``list`` sorts)."""
    start = datetime.now(UTC) - timedelta(milliseconds=n)
    out = []
    for i in range(n):
        event = mixed_event(tag, i, start + timedelta(milliseconds=i), TOOLS)
        run_id = derive_run_id(SOURCE, event["event_id"])
        out.append(Prepared(f"{SOURCE}:{event['event_id']}", json.dumps(event).encode(), run_id))
    return out


# ---------------------------------------------------------------------------------- the responder


async def serve_echo(url: str, subject: str) -> None:
    """The bare floor's responder (run in its own process): answers every request on ``subject``
    with ``ECHO_REPLY``; says ``ready`` on stdout once subscribed; runs until killed."""
    nc = await nats.connect(url, connect_timeout=5, allow_reconnect=False, name="query-bench-echo")

    async def respond(msg: Msg) -> None:
        await msg.respond(ECHO_REPLY)

    await nc.subscribe(subject, cb=respond)
    await nc.flush(timeout=5)
    print("ready", flush=True)
    await asyncio.Event().wait()


@contextlib.asynccontextmanager
async def echo_responder(url: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """``serve_echo`` as a child process (this script with ``--echo-responder``), ready;
    terminated (killed after 10 s) on the way out, also on errors."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT), ECHO_FLAG, url, ECHO_SUBJECT,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        preexec_fn=die_with_parent,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30.0)
        if line.strip() != b"ready":
            raise BenchError(f"echo responder did not start (exit {proc.returncode}): {line!r}")
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10.0)
        except TimeoutError:
            proc.kill()
            await proc.wait()


# -------------------------------------------------------------------------------------- populate


@dataclass
class Populated:
    run_ids: list[str]
    publish_s: float  # first publish -> last PubAck
    settled_s: float  # first publish -> the events consumer acked everything
    indexed_s: float  # first publish -> ``list`` shows every run

    def line(self) -> str:
        n = len(self.run_ids)
        return (
            f"populate {n:,} runs: published in {self.publish_s:.1f}s, "
            f"acked by the worker in {self.settled_s:.1f}s ({n / self.settled_s:,.0f} runs/s), "
            f"all listed after {self.indexed_s:.1f}s"
        )


async def count_listed(client: RunsClient) -> int:
    count = 0
    async for _ in client.iter_runs(page_size=500):
        count += 1
    return count


async def wait_listed(client: RunsClient, newest: str, n: int, timeout: float) -> None:
    """Until ``list`` shows ``newest`` first and counts ``n`` runs in all (the jetstream store's
    index is a projection of the bucket: it may trail the consumer's acks, and ``list`` answers
    UNAVAILABLE meanwhile)."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                page = await client.list_page(limit=1)
                newest_first = bool(page.items) and page.items[0].run_id == newest
                if newest_first and await count_listed(client) == n:
                    return
            except RunsApiError as exc:  # the jetstream store says so while its index trails
                if exc.code != "UNAVAILABLE":
                    raise
            await asyncio.sleep(0.5)


async def populate(
    cfg: Config, nc: Client, client: RunsClient, worker: WorkerProcess, n: int, tag: str
) -> Populated:
    events = query_events(tag, n)
    timeout = cfg.populate_timeout(n)
    started = time.perf_counter()
    _, last_seq = await publish_all(nc, events, cfg.in_flight, timeout)
    published = time.perf_counter()
    try:
        settled = await wait_settled(nc.jetstream(), last_seq, timeout, poll=0.05)
    except TimeoutError:
        worker.check_alive()
        raise BenchError(f"worker did not settle in {timeout:.0f}s:\n{worker.log(4000)}") from None
    if dead := await dlq_count(nc.jetstream()):
        raise BenchError(f"{dead} dead letters while populating")
    await wait_listed(client, events[-1].run_id, n, 120.0 + n / 1000.0)
    indexed = time.perf_counter()
    return Populated(
        [e.run_id for e in events], published - started, settled - started, indexed - started
    )


# ------------------------------------------------------------------------------------------ timing


@dataclass(frozen=True)
class Stats:
    p50: float
    p99: float
    max: float  # milliseconds

    @classmethod
    def of(cls, ns: Sequence[int]) -> Stats:
        ms = [v / 1e6 for v in ns]
        return cls(percentile(ms, 50), percentile(ms, 99), max(ms, default=math.nan))


@dataclass(frozen=True)
class QueryRep:
    stats: dict[str, Stats]
    worker_us: float  # the worker's CPU per API call (get or list)
    nats_us: float  # nats-server's CPU per request (any kind)
    echo_us: float  # the responder's CPU per bare request
    others_cores: float  # the rest of the machine meanwhile
    short_pages: int  # list replies with fewer than LIST_LIMIT items (should be 0)
    idle_worker_cores: float  # the worker's CPU in the idle second before the calls

    def line(self) -> str:
        kinds = " | ".join(
            f"{k} {s.p50:.2f}/{s.p99:.2f}/{s.max:.2f}" for k, s in self.stats.items()
        )
        get_ratio, list_extra = checks(self.stats["bare"], self.stats["get"], self.stats["list"])
        return (
            f"p50/p99/max ms: {kinds} || get/bare p99 {get_ratio:.2f}, list-bare p99 "
            f"{list_extra:.2f} ms || cpu µs/call: worker {self.worker_us:.0f} nats "
            f"{self.nats_us:.0f} echo {self.echo_us:.0f}; worker idle before "
            f"{self.idle_worker_cores:.2f} cores; others {self.others_cores:.2f} cores"
            + (f"; {self.short_pages} SHORT list pages" if self.short_pages else "")
        )


def checks(bare: Stats, get: Stats, list_: Stats) -> tuple[float, float]:
    """(get p99 / bare p99, list p99 - bare p99 in ms)."""
    return get.p99 / bare.p99, list_.p99 - bare.p99


@dataclass
class Caller:
    """The three kinds of call, their arguments drawn before any clock starts."""

    nc: Client
    client: RunsClient
    run_ids: Sequence[str]
    rng: random.Random
    short_pages: int = 0

    def plan(self, calls: int) -> Iterator[tuple[str, str]]:
        """(kind, argument) round-robin: bare, get, list, bare, get, list, ..."""
        for _ in range(calls):
            yield "bare", ""
            yield "get", self.rng.choice(self.run_ids)
            yield "list", self.rng.choice(TOOLS)

    async def call(self, kind: str, arg: str) -> int:
        """One call; its nanoseconds (``perf_counter_ns`` just around it)."""
        if kind == "bare":
            started = time.perf_counter_ns()
            await self.nc.request(ECHO_SUBJECT, b"{}", timeout=CALL_TIMEOUT)
            return time.perf_counter_ns() - started
        if kind == "get":
            started = time.perf_counter_ns()
            await self.client.get(arg)
            return time.perf_counter_ns() - started
        started = time.perf_counter_ns()
        page = await self.client.list_page(status=LIST_STATUS, tool_id=arg, limit=LIST_LIMIT)
        elapsed = time.perf_counter_ns() - started
        if len(page.items) < LIST_LIMIT:
            self.short_pages += 1
        return elapsed


async def timed_rep(cfg: Config, caller: Caller, pids: Mapping[str, int | None]) -> QueryRep:
    """Warm-up, then ``cfg.calls`` of each kind, interleaved, with the CPU of ``pids``."""
    for kind, arg in list(caller.plan(WARMUP)):
        await caller.call(kind, arg)
    idle = CpuMeter({"worker": pids["worker"]})
    idle.start()
    await asyncio.sleep(IDLE_S)  # background work of the worker would show here
    idle_worker = idle.stop()["worker"] / IDLE_S
    plan = list(caller.plan(cfg.calls))
    caller.short_pages = 0
    times: dict[str, list[int]] = {kind: [] for kind in KINDS}
    gc.collect()
    gc.freeze()  # the populate's garbage-free heap: no long collections among the calls
    meter = CpuMeter(dict(pids))
    meter.start()
    started = time.perf_counter()
    for kind, arg in plan:
        times[kind].append(await caller.call(kind, arg))
    wall = time.perf_counter() - started
    used = meter.stop()
    gc.unfreeze()
    return QueryRep(
        stats={kind: Stats.of(times[kind]) for kind in KINDS},
        worker_us=used["worker"] / (2 * cfg.calls) * 1e6,
        nats_us=used["nats"] / (len(KINDS) * cfg.calls) * 1e6,
        echo_us=used["echo"] / cfg.calls * 1e6,
        others_cores=used["others"] / wall,
        short_pages=caller.short_pages,
        idle_worker_cores=idle_worker,
    )


async def decode_costs(nc: Client, run_id: str) -> str:
    """µs this process spends decoding one reply as ``RunsClient`` does (``get``: json.loads;
    ``list``: json.loads + ``ListPage`` validation): part of the timed calls, not the worker's."""
    body = {"status": LIST_STATUS, "tool_id": TOOLS[0], "limit": LIST_LIMIT}
    get_raw = await nc.request(
        SUBJECTS.api_op("get"), json.dumps({"run_id": run_id}).encode(), timeout=CALL_TIMEOUT
    )
    list_raw = await nc.request(
        SUBJECTS.api_op("list"), json.dumps(body).encode(), timeout=CALL_TIMEOUT
    )
    started = time.perf_counter_ns()
    for _ in range(DECODES):
        json.loads(get_raw.data)
    get_us = (time.perf_counter_ns() - started) / DECODES / 1e3
    started = time.perf_counter_ns()
    for _ in range(DECODES):
        ListPage.model_validate(json.loads(list_raw.data))
    list_us = (time.perf_counter_ns() - started) / DECODES / 1e3
    return (
        f"bench-side decode µs (part of the timed calls): get {get_us:.0f} "
        f"({len(get_raw.data):,} B reply), list {list_us:.0f} ({len(list_raw.data):,} B reply)"
    )


# ------------------------------------------------------------------------------------- per store


@dataclass
class StoreResult:
    store: str
    populated: Populated
    reps: list[QueryRep]


async def bench_store(cfg: Config, store: str, tmp: Path) -> StoreResult:
    """A fresh server and worker for ``store``: populate once, then ``cfg.reps`` timed phases."""
    work = tmp / store
    work.mkdir()
    n = cfg.runs_for(store)
    async with (
        nats_server(work / "nats") as server,
        running_worker(
            server.url, work / "data", work / "worker.log", env=STORE_ENV[store]
        ) as worker,
        connection(server.url) as nc,
    ):
        client = RunsClient(nc, SUBJECTS, timeout=CALL_TIMEOUT)
        ready_s = await worker.wait_ready(client, READY_TIMEOUT)
        print(f"[{store}] worker ready in {ready_s:.1f}s (log {worker.log_path})", flush=True)
        populated = await populate(cfg, nc, client, worker, n, f"q{store[:2]}")
        print(f"[{store}] {populated.line()}", flush=True)
        reps = await timed_reps(cfg, store, nc, client, server, worker, populated)
        worker.check_alive()
    return StoreResult(store, populated, reps)


async def timed_reps(
    cfg: Config,
    store: str,
    nc: Client,
    client: RunsClient,
    server: NatsServer,
    worker: WorkerProcess,
    populated: Populated,
) -> list[QueryRep]:
    reps = []
    print(f"[{store}] {await decode_costs(nc, populated.run_ids[0])}", flush=True)
    async with echo_responder(server.url) as echo:
        caller = Caller(nc, client, populated.run_ids, random.Random(cfg.seed))
        pids = {"worker": worker.pid, "nats": server.pid, "echo": echo.pid, "bench": os.getpid()}
        for rep in range(1, cfg.reps + 1):
            note_code_change(f"{store} rep {rep}")
            await wait_quiet(cfg.quiet_s)
            async with asyncio.timeout(cfg.timed_timeout()):
                result = await timed_rep(cfg, caller, pids)
            reps.append(result)
            print(f"[{store}] rep {rep}: {result.line()}", flush=True)
    return reps


# ----------------------------------------------------------------------------------------- report


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def print_store(res: StoreResult, cfg: Config) -> None:
    n = len(res.populated.run_ids)
    print(
        f"\n=== {res.store} store: {n:,} runs stored, {cfg.calls} calls a kind, "
        f"medians of {len(res.reps)} rep(s) (max: the largest of any rep) ==="
    )
    print(f"  {res.populated.line()}")
    print(f"  {'':<6}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}   p99 per rep")
    summary: dict[str, Stats] = {}
    for kind in KINDS:
        stats = [r.stats[kind] for r in res.reps]
        summary[kind] = Stats(
            median([s.p50 for s in stats]),
            median([s.p99 for s in stats]),
            max(s.max for s in stats),
        )
        per_rep = " / ".join(f"{s.p99:.2f}" for s in stats)
        s = summary[kind]
        print(f"  {kind:<6}{s.p50:>9.2f}{s.p99:>9.2f}{s.max:>9.2f}   {per_rep}")
    ratio, extra = checks(summary["bare"], summary["get"], summary["list"])
    print(
        f"  get p99 / bare p99 = {ratio:.2f} (target ≤ {TARGET_GET_RATIO:g}): "
        f"{met(ratio <= TARGET_GET_RATIO)}"
    )
    print(
        f"  list p99 - bare p99 = {extra:.2f} ms (target ≤ {TARGET_LIST_EXTRA_MS:g}): "
        f"{met(extra <= TARGET_LIST_EXTRA_MS)}"
    )
    worker_us = median([r.worker_us for r in res.reps])
    nats_us = median([r.nats_us for r in res.reps])
    others = median([r.others_cores for r in res.reps])
    print(
        f"  cpu µs/call: worker {worker_us:.0f} (per get or list), nats {nats_us:.0f} "
        f"(per request); others {others:.2f} cores"
    )
    short = sum(r.short_pages for r in res.reps)
    if short:
        print(f"  ! {short} list pages had fewer than {LIST_LIMIT} items")


# ------------------------------------------------------------------------------------------- main


async def main(cfg: Config) -> int:
    async def body(tmp: Path) -> None:
        print(f"query event size {len(query_events('probe', 1)[0].payload)} bytes", flush=True)
        results = [await bench_store(cfg, store, tmp) for store in cfg.stores]
        for res in results:
            print_store(res, cfg)
        print_findings()

    return await in_temp_dir("query-", body)


def parse_args(argv: Sequence[str] | None = None) -> tuple[Config, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, help="runs stored before the timed calls (100000)")
    parser.add_argument("--jetstream-runs", type=int, help="runs for the jetstream store (--runs)")
    parser.add_argument("--calls", type=int, help="timed calls of each kind per rep (1000)")
    parser.add_argument("--quick", action="store_true", help="5000 runs, 300 calls")
    parser.add_argument("--reps", type=int, default=3, help="timed phases per store (3)")
    parser.add_argument("--stores", default="files,jetstream", help="comma-separated")
    parser.add_argument("--in-flight", type=int, default=1000, help="publish_async window")
    parser.add_argument(
        "--quiet", type=float, default=30.0, help="wait up to S s for an idle machine per rep"
    )
    parser.add_argument("--seed", type=int, default=14, help="of the random run ids and tools")
    parser.add_argument("--timeout", type=float, default=3600.0, help="whole run, seconds")
    args = parser.parse_args(argv)
    defaults = (5000, 300) if args.quick else (100_000, 1000)
    for name, default in zip(("runs", "calls"), defaults, strict=True):
        if getattr(args, name) is None:  # an explicit flag wins over --quick
            setattr(args, name, default)
    stores = tuple(s.strip() for s in args.stores.split(",") if s.strip())
    unknown = [s for s in stores if s not in STORE_ENV]
    if unknown or not stores:
        parser.error(f"--stores: one or more of {', '.join(STORE_ENV)} (not {unknown})")
    if min(args.runs, args.calls, args.reps) < 1:
        parser.error("--runs, --calls and --reps must be at least 1")
    return Config(
        runs=args.runs,
        jetstream_runs=args.jetstream_runs,
        calls=args.calls,
        reps=args.reps,
        stores=stores,
        in_flight=args.in_flight,
        quiet_s=args.quiet,
        seed=args.seed,
    ), args.timeout


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == ECHO_FLAG:  # the responder's process
        asyncio.run(serve_echo(sys.argv[2], sys.argv[3]))
    else:
        config, total_timeout = parse_args()
        sys.exit(asyncio.run(bounded(main(config), total_timeout)))
