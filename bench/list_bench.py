"""List benchmark: latency of the ``list`` index (``RunIndex.query``) at 100k and 1M runs.

For each size, on the /work disk (``.bench-tmp/`` in the repository, removed at the end):

build    a synthetic but realistic index written with ``RunIndex.upsert``, 10k rows a
         transaction, newest last (as the worker ingests): rows/s and the file size.
queries  a mix of ``list`` requests, each kind ~200 times with varied parameters, turned into an
         index query by the API's own ``to_query`` (the keyset ``after`` as the cursor gives it)
         and timed around ``RunIndex.query`` with ``perf_counter_ns``: p50, p99 and max per kind,
         how many rows the filter matches, and the ``EXPLAIN QUERY PLAN`` of the query, so it is
         clear which kinds use an index and which scan. A kind that is slow stops after
         ``--budget`` seconds (its n is printed).

Then, once, the API overhead: a real nats-server on loopback, the worker as a subprocess
(``python -m worker.cli worker``), ~200 runs made with ``RunsClient.create``, and 500
``list_page(limit=50)`` calls timed end to end, next to the same query on the same index file
in this process, and a ``get`` of a missing run (the request-reply floor). The difference is
what the API adds to the index figures.

The machine has 2 cores and other benchmarks may run on it: before each phase the script waits
(at most ``--quiet`` seconds) until the rest of the machine is idle, and it prints the cores the
rest of the machine used during each phase (``others``): above ~0.3, figures are inflated.

Usage: .venv/bin/python bench/list_bench.py [--quick] [--sizes 100000,1000000] [--reps 200]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import math
import os
import random
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from contracts.api import ListRequest
from worker.api import to_query
from worker.client import RunsApiError, RunsClient
from worker.core.timefmt import utc_text
from worker.nats_server import NatsServer
from worker.store.base import Query
from worker.store.index import SUMMARY, RunIndex, _where
from worker.testing import PROBE_RUN, WorkerProcess

ROOT = Path(__file__).resolve().parent.parent
TMP_PARENT = ROOT / ".bench-tmp"
CLK_TCK = os.sysconf("SC_CLK_TCK")
CHUNK = 10_000
START = datetime(2026, 3, 1, tzinfo=UTC)
DAYS = 30
SPAN_US = DAYS * 86_400 * 1_000_000
BUSY = 0.3  # cores used by the rest of the machine above which a figure is suspect

# --- the synthetic population ----------------------------------------------------------------

TOOL_FAMILIES = (
    "saw-0.8mm", "saw-1.0mm", "saw-1.5mm", "endmill-3mm", "endmill-6mm",
    "vbit-60deg", "vbit-90deg", "drill-2.5mm", "ballnose-2mm", "router-1.5mm",
)  # fmt: skip
TOOLS = tuple(f"{family}-{k}" for family in TOOL_FAMILIES for k in range(1, 21))  # 200
SOURCES = tuple(f"engine-{k:02d}" for k in range(20))
MATERIALS = tuple(f"mat-{k:03d}" for k in range(40))
MACHINES = tuple(f"cnc-{k:02d}" for k in range(12))
SESSIONS = tuple(f"ws-{k:05d}" for k in range(5000))
MODES = ("rosette", "binding", "purfling", "inlay", "carving", "fret_slots")
EVENT_TYPES = (("feasibility", 60), ("toolpath", 25), ("gcode", 10), ("simulation", 5))
STATUSES = (("OK", 70), ("BLOCKED", 25), ("ERROR", 5))
RISK_BY_STATUS = {
    "OK": (("GREEN", 80), ("YELLOW", 20)),
    "BLOCKED": (("RED", 70), ("YELLOW", 30)),
    "ERROR": (("ERROR", 60), ("UNKNOWN", 40)),
}
EXPLANATIONS = (("NONE", 88), ("READY", 8), ("PENDING", 2), ("ERROR", 2))


class Picker:
    """Weighted choices, many at a time (``random.choices`` with precomputed cum_weights)."""

    def __init__(self, weighted: Sequence[tuple[str, float]]) -> None:
        self.values = [v for v, _ in weighted]
        total = 0.0
        self.cum: list[float] = []
        for _, w in weighted:
            total += w
            self.cum.append(total)

    def many(self, rng: random.Random, k: int) -> list[str]:
        return rng.choices(self.values, cum_weights=self.cum, k=k)

    def one(self, rng: random.Random) -> str:
        return self.many(rng, 1)[0]


def zipf(values: Sequence[str], rng: random.Random, s: float = 1.1) -> Picker:
    """Skewed popularity (a few common values, a long tail), in a shuffled order."""
    order = list(values)
    rng.shuffle(order)
    return Picker([(v, 1 / (k + 1) ** s) for k, v in enumerate(order)])


@dataclass
class Population:
    rng: random.Random
    sources: Picker
    tools: Picker
    materials: Picker
    machines: Picker
    sessions: Picker = field(default_factory=lambda: Picker([(s, 1) for s in SESSIONS]))
    modes: Picker = field(default_factory=lambda: Picker([(m, 1) for m in MODES]))
    event_types: Picker = field(default_factory=lambda: Picker(EVENT_TYPES))
    statuses: Picker = field(default_factory=lambda: Picker(STATUSES))
    risks: dict[str, Picker] = field(
        default_factory=lambda: {s: Picker(w) for s, w in RISK_BY_STATUS.items()}
    )
    explanations: Picker = field(default_factory=lambda: Picker(EXPLANATIONS))


def population(seed: int) -> Population:
    rng = random.Random(seed)
    return Population(
        rng, zipf(SOURCES, rng), zipf(TOOLS, rng), zipf(MATERIALS, rng), zipf(MACHINES, rng)
    )


class RunGenerator:
    """``total`` artifacts (the indexed fields only), oldest first, spread over ``DAYS`` days."""

    def __init__(self, total: int, seed: int = 1) -> None:
        self.pop = population(seed)
        self.total = total
        self.made = 0
        self.step_us = SPAN_US / total
        self.recent: list[str] = []  # parents are recent runs

    def chunk(self, size: int) -> list[dict[str, Any]]:
        pop, rng = self.pop, self.pop.rng
        columns = zip(
            pop.statuses.many(rng, size), pop.sources.many(rng, size),
            pop.tools.many(rng, size), pop.materials.many(rng, size),
            pop.machines.many(rng, size), pop.sessions.many(rng, size),
            pop.modes.many(rng, size), pop.event_types.many(rng, size),
            pop.explanations.many(rng, size), strict=True,
        )  # fmt: skip
        out = []
        ids: list[str] = []
        for status, source, tool, material, machine, session, mode, etype, expl in columns:
            jitter = rng.random() * 3 * self.step_us  # mostly in order, a little shuffled
            created = START + timedelta(microseconds=int(self.made * self.step_us + jitter))
            parent = rng.choice(self.recent) if self.recent and rng.random() < 0.1 else None
            run_id = f"run_{rng.getrandbits(128):032x}"
            out.append({
                "run_id": run_id, "created_at_utc": utc_text(created), "status": status,
                "event_type": etype, "mode": mode, "tool_id": tool, "source": source,
                "decision": {"risk_level": pop.risks[status].one(rng)},
                "explanation_status": expl, "revision": 1 if expl in ("NONE", "PENDING") else 2,
                "workflow_session_id": session, "material_id": material, "machine_id": machine,
                "parent_run_id": parent,
            })  # fmt: skip
            ids.append(run_id)
            self.made += 1
        self.recent = ids
        return out


# --- machine load ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CpuMark:
    wall: float
    busy: float  # CPU seconds the whole machine has used
    ours: float  # CPU seconds this process and the given children have used


def _machine_busy() -> float:
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / CLK_TCK  # minus idle and iowait


def _pid_cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def cpu_mark(pids: Sequence[int | None] = ()) -> CpuMark:
    ours = time.process_time() + sum(_pid_cpu(p) for p in pids)
    return CpuMark(time.monotonic(), _machine_busy(), ours)


def others_cores(a: CpuMark, b: CpuMark) -> float:
    """Cores used by everything but us between two marks."""
    wall = max(b.wall - a.wall, 1e-9)
    return max(0.0, ((b.busy - a.busy) - (b.ours - a.ours)) / wall)


def load_note(others: float) -> str:
    flag = "  << BUSY MACHINE: figures inflated" if others > BUSY else ""
    return f"others {others:.2f} cores{flag}"


def wait_quiet(max_wait: float, window: float = 3.0) -> str:
    """Wait (bounded) until the rest of the machine is idle; say how it went."""
    begin = time.monotonic()
    said = -math.inf
    while True:
        a = cpu_mark()
        time.sleep(window)
        others = others_cores(a, cpu_mark())
        waited = time.monotonic() - begin
        if others < BUSY:
            return f"machine quiet (others {others:.2f} cores, waited {waited:.0f} s)"
        if waited >= max_wait:
            return (
                f"BUSY: others still use {others:.2f} cores after {waited:.0f} s "
                f"(load {os.getloadavg()[0]:.2f}); measuring anyway, figures inflated"
            )
        if waited - said >= 30:
            print(f"  waiting for a quiet machine: others use {others:.2f} cores", flush=True)
            said = waited


# --- statistics ------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (p99 of 200 values: the 2nd largest)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def ms(ns: Sequence[int]) -> list[float]:
    return [n / 1e6 for n in ns]


# --- the query mix ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Kind:
    name: str
    body: Callable[[Population], dict[str, Any]]  # a ListRequest body (filters, limit)
    pages: int = 1  # the page timed: > 1 walks the pages before it with keyset cursors
    random_after: bool = False  # start after a random keyset position


def _day(pop: Population) -> dict[str, Any]:
    day = START + timedelta(days=pop.rng.randrange(DAYS))
    end = day + timedelta(days=1) - timedelta(microseconds=1)
    return {"created_from": day.isoformat(), "created_to": end.isoformat()}


KINDS = (
    Kind("first page", lambda p: {}),
    Kind("page 20 (keyset)", lambda p: {}, pages=20),
    Kind("page 20 source=X", lambda p: {"source": p.sources.one(p.rng)}, pages=20),
    Kind("status=BLOCKED", lambda p: {"status": "BLOCKED"}),
    Kind("source=X", lambda p: {"source": p.rng.choice(SOURCES)}),
    Kind("tool_id=X", lambda p: {"tool_id": p.rng.choice(TOOLS)}),
    Kind("tool_id_prefix=saw-0.8mm-1", lambda p: {"tool_id_prefix": "saw-0.8mm-1"}),
    Kind("material_id=X", lambda p: {"material_id": p.rng.choice(MATERIALS)}),
    Kind("risk=RED & status=BLOCKED", lambda p: {"risk_level": "RED", "status": "BLOCKED"}),
    Kind("one-day range", _day),
    Kind("workflow_session_id=X", lambda p: {"workflow_session_id": p.rng.choice(SESSIONS)}),
    Kind("source=nope (no match)", lambda p: {"source": "nope"}),
    Kind("material_id=nope (no match)", lambda p: {"material_id": "nope"}),
    Kind("tool_id_prefix=nope (no match)", lambda p: {"tool_id_prefix": "nope"}),
    Kind("limit 500 (keyset)", lambda p: {"limit": 500}, random_after=True),
)


def request_query(body: dict[str, Any], after: tuple[str, str] | None) -> Query:
    """The index query the API would run for this body, as ``list_page`` builds it."""
    return to_query(ListRequest.model_validate(body), after)


def next_after(index: RunIndex, query: Query) -> tuple[str, str] | None:
    """The keyset position after this page (what ``next_cursor`` encodes), None at the end."""
    rows = index.query(query)
    if len(rows) <= query.limit:
        return None
    last = rows[query.limit - 1]
    return last["created_at_utc"], last["run_id"]


def make_query(index: RunIndex, kind: Kind, pop: Population) -> Query:
    query = request_query(kind.body(pop), None)
    if kind.random_after:
        moment = START + timedelta(microseconds=pop.rng.randrange(SPAN_US))
        return replace(query, after=(utc_text(moment), "run_" + "f" * 32))
    for _ in range(kind.pages - 1):  # untimed: the walk that produced the cursor
        after = next_after(index, query)
        if after is None:
            break  # fewer pages than asked: time the last one
        query = replace(query, after=after)
    return query


def select_sql(query: Query) -> tuple[str, list[Any]]:
    """The statement ``RunIndex.query`` runs (kept in step with it), and its parameters."""
    where, params = _where(query)
    sql = (
        f"SELECT {', '.join(SUMMARY)} FROM runs {where} "
        "ORDER BY created_at_utc DESC, run_id DESC LIMIT ?"
    )
    return sql, [*params, query.limit + 1]


def plan_of(db: sqlite3.Connection, query: Query) -> str:
    sql, params = select_sql(query)
    rows = db.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
    return "; ".join(str(row[3]) for row in rows)


def matches(db: sqlite3.Connection, query: Query) -> int:
    where, params = _where(replace(query, after=None))
    (n,) = db.execute(f"SELECT count(*) FROM runs {where}", params).fetchone()
    return int(n)


@dataclass
class KindResult:
    kind: Kind
    plan: str = ""
    matched: list[int] = field(default_factory=list)
    ns: list[int] = field(default_factory=list)
    spent_ns: int = 0

    def row(self) -> str:
        values = ms(self.ns)
        match = f"{statistics.median(self.matched):.0f}" if self.matched else "-"
        return (
            f"{self.kind.name:<31} {len(values):>4} {pct(values, 0.5):>8.2f} "
            f"{pct(values, 0.99):>8.2f} {max(values, default=math.nan):>8.2f} "
            f"{match:>9}  {self.plan}"
        )


def time_calls(calls: Sequence[tuple[KindResult, Callable[[], object]]], budget_s: float) -> None:
    """Run the calls in this order, timing each; a kind stops once over its budget."""
    budget_ns = int(budget_s * 1e9)
    for result, call in calls:
        if result.spent_ns > budget_ns:
            continue
        t0 = time.perf_counter_ns()
        call()
        elapsed = time.perf_counter_ns() - t0
        result.ns.append(elapsed)
        result.spent_ns += elapsed


def measure_queries(
    index: RunIndex, db: sqlite3.Connection, reps: int, budget_s: float, seed: int
) -> list[KindResult]:
    """Every kind ``reps`` times, interleaved at random."""
    pop = population(seed)  # the same popularity as the data, other draws
    results = [KindResult(kind) for kind in KINDS]
    calls: list[tuple[KindResult, Callable[[], object]]] = []
    for result in results:
        queries = [make_query(index, result.kind, pop) for _ in range(reps)]
        result.plan = plan_of(db, queries[0])
        result.matched = [matches(db, q) for q in queries[:3]]
        for q in queries[:3]:  # warm-up, untimed
            index.query(q)
        calls += [(result, functools.partial(index.query, q)) for q in queries]
    pop.rng.shuffle(calls)
    time_calls(calls, budget_s)
    return results


# --- what-if: the candidate fixes, on this benchmark's own copy -------------------------------

MATERIAL_INDEX = (
    "CREATE INDEX runs_material_id ON runs (material_id, created_at_utc DESC, run_id DESC)"
)


def prefix_range(query: Query) -> tuple[str, list[Any]]:
    """``tool_id_prefix`` as a range on ``tool_id`` (sargable) instead of ``substr(...) = ?``."""
    prefix = query.tool_id_prefix
    assert prefix
    upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    sql, params = select_sql(replace(query, tool_id_prefix=None))
    sql = sql.replace(" FROM runs ", " FROM runs WHERE tool_id >= ? AND tool_id < ? ", 1)
    return sql, [prefix, upper, *params]


def run_sql(db: sqlite3.Connection, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    """What ``RunIndex.query`` does with its statement, for a statement it does not make."""
    return [dict(zip(SUMMARY, row, strict=True)) for row in db.execute(sql, params)]


def what_if_material(index: RunIndex, db: sqlite3.Connection, reps: int) -> list[KindResult]:
    """The material kinds again, through ``RunIndex.query``, once the index exists."""
    pop = population(reps)
    results = []
    for kind in (k for k in KINDS if "material_id" in k.name):
        queries = [make_query(index, kind, pop) for _ in range(reps)]
        result = KindResult(kind, plan_of(db, queries[0]))
        time_calls([(result, functools.partial(index.query, q)) for q in queries], 10)
        results.append(result)
    return results


def what_if_prefix(index: RunIndex, db: sqlite3.Connection, reps: int) -> list[KindResult]:
    """The prefix kinds with the range statement (on the benchmark's own connection)."""
    pop = population(reps)
    results = []
    for kind in (k for k in KINDS if "tool_id_prefix" in k.name):
        statements = [prefix_range(make_query(index, kind, pop)) for _ in range(reps)]
        sql, params = statements[0]
        plan = "; ".join(str(r[3]) for r in db.execute(f"EXPLAIN QUERY PLAN {sql}", params))
        name = kind.name.replace("tool_id_prefix", "prefix as range")
        result = KindResult(replace(kind, name=name), plan)
        calls = [(result, functools.partial(run_sql, db, *st)) for st in statements]
        time_calls(calls, 10)
        results.append(result)
    return results


def what_if(index: RunIndex, db: sqlite3.Connection, reps: int) -> list[str]:
    """Re-measure the scanning kinds with the fixes that let them use an index."""
    t0 = time.perf_counter()
    before = file_size(index.path)
    db.execute(MATERIAL_INDEX)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    grown = (file_size(index.path) - before) / 1e6
    return [
        f"what-if 1: + index runs_material_id (material_id, created_at_utc DESC, run_id DESC): "
        f"built in {time.perf_counter() - t0:.1f} s, +{grown:.1f} MB",
        *(r.row() for r in what_if_material(index, db, reps)),
        "what-if 2: tool_id_prefix as `tool_id >= p AND tool_id < p+1` (no new index)",
        *(r.row() for r in what_if_prefix(index, db, reps)),
    ]


# --- one size --------------------------------------------------------------------------------


def file_size(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())


def build(index: RunIndex, rw: sqlite3.Connection, size: int) -> list[str]:
    gen = RunGenerator(size)
    upsert_ns: list[int] = []
    gen_ns = 0
    mark = cpu_mark()
    while gen.made < size:
        t0 = time.perf_counter_ns()
        chunk = gen.chunk(min(CHUNK, size - gen.made))
        t1 = time.perf_counter_ns()
        index.upsert(chunk)
        upsert_ns.append(time.perf_counter_ns() - t1)
        gen_ns += t1 - t0
    others = others_cores(mark, cpu_mark())
    wal = file_size(index.path) - index.path.stat().st_size
    rw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    total = sum(upsert_ns) / 1e9
    first, last = CHUNK / (upsert_ns[0] / 1e9), CHUNK / (upsert_ns[-1] / 1e9)
    return [
        f"build: {size:,} rows upserted in {total:.1f} s = {size / total:,.0f} rows/s "
        f"(first 10k chunk {first:,.0f} rows/s, last {last:,.0f} rows/s; "
        f"generating them took {gen_ns / 1e9:.1f} s more); {load_note(others)} "
        "(others includes the kernel writing this file back)",
        f"file: {file_size(index.path) / 1e6:.1f} MB after a checkpoint (the WAL had grown to "
        f"{wal / 1e6:.1f} MB), {file_size(index.path) / size:.0f} bytes/run; "
        f"count() = {index.count():,}",
    ]


def print_table(results: Sequence[KindResult]) -> None:
    print(f"  {'kind':<31} {'n':>4} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'matches':>9}  plan")
    for result in results:
        print("  " + result.row(), flush=True)


def bench_size(tmp: Path, size: int, args: argparse.Namespace) -> None:
    print(f"\n== {size:,} runs ==", flush=True)
    print("  " + wait_quiet(args.quiet), flush=True)
    path = tmp / f"index-{size}.sqlite"
    index = RunIndex(path, flushed_by_caller=True)  # synchronous=NORMAL, as the worker on Linux
    index.open()
    db = sqlite3.connect(path, isolation_level=None)  # plans, counts, checkpoints, what-ifs
    try:
        for line in build(index, db, size):
            print("  " + line, flush=True)
        print("  " + wait_quiet(args.quiet), flush=True)
        mark = cpu_mark()
        results = measure_queries(index, db, args.reps, args.budget, seed=size)
        others = others_cores(mark, cpu_mark())
        print(f"  queries ({load_note(others)}; matches = rows the filter matches, median of 3):")
        print_table(results)
        if not args.no_what_if:
            mark = cpu_mark()
            lines = what_if(index, db, max(1, args.reps // 4))
            print(f"  {lines[0]}; {load_note(others_cores(mark, cpu_mark()))}")
            for line in lines[1:]:
                print("  " + line, flush=True)
    finally:
        db.close()
        index.close()
        for p in tmp.glob(f"index-{size}.sqlite*"):
            p.unlink()


# --- the API overhead, end to end ------------------------------------------------------------


def run_event(k: int, rng: random.Random) -> dict[str, Any]:
    status = rng.choices(["OK", "BLOCKED", "ERROR"], [70, 25, 5])[0]
    risk = {"OK": "GREEN", "BLOCKED": "RED", "ERROR": "UNKNOWN"}[status]
    return {
        "schema": "rmos.run_event.v1", "event_id": f"list-bench-{k}",
        "source": rng.choice(SOURCES[:5]), "mode": rng.choice(MODES),
        "tool_id": rng.choice(TOOLS), "event_type": "feasibility", "status": status,
        "feasibility": {"max_depth_mm": 1.2, "ok": status == "OK"},
        "decision": {"risk_level": risk, "score": rng.randrange(100)},
        "workflow_session_id": rng.choice(SESSIONS[:20]), "material_id": rng.choice(MATERIALS),
    }  # fmt: skip


async def timed(calls: int, call: Callable[[], Awaitable[None]]) -> list[float]:
    """Milliseconds of each of ``calls`` awaits of ``call()``, after 20 untimed ones."""
    out: list[int] = []
    for i in range(calls + 20):
        t0 = time.perf_counter_ns()
        await call()
        if i >= 20:
            out.append(time.perf_counter_ns() - t0)
    return ms(out)


def stats_line(name: str, values: Sequence[float]) -> str:
    p50, p99 = pct(values, 0.5), pct(values, 0.99)
    return f"  {name:<48} n={len(values):>4}  p50 {p50:7.3f} ms  p99 {p99:7.3f} ms"


async def api_calls(
    client: RunsClient, index: RunIndex, calls: int
) -> list[tuple[str, list[float]]]:
    async def missing_get() -> None:
        with contextlib.suppress(RunsApiError):
            await client.request("get", {"run_id": PROBE_RUN})

    async def listed() -> None:
        page = await client.list_page(limit=50)
        assert len(page.items) == 50, page

    async def direct() -> None:
        index.query(Query(limit=50))

    return [
        ("get of a missing run (request-reply floor)", await timed(calls, missing_get)),
        ("list_page(limit=50), end to end", await timed(calls, listed)),
        ("RunIndex.query(limit=50), same file, in-process", await timed(calls, direct)),
    ]


async def api_overhead(tmp: Path, runs: int, calls: int, quiet: float) -> None:
    print(f"\n== API overhead: nats-server + worker subprocess, {runs} runs ==", flush=True)
    server = NatsServer(tmp / "nats")
    worker: WorkerProcess | None = None
    client: RunsClient | None = None
    index = RunIndex(tmp / "worker-data" / "index.sqlite")
    try:
        url = await server.start()
        log_path = tmp / "worker.log"
        worker = WorkerProcess(
            url, tmp / "worker-data", cwd=ROOT, log_path=log_path, die_with_parent=True
        )
        await worker.start()
        client = await RunsClient.connect(url, timeout=10)
        await worker.wait_ready(client, timeout=60)
        rng = random.Random(7)
        t0 = time.perf_counter_ns()
        for k in range(runs):
            await client.create(run_event(k, rng))
        made = (time.perf_counter_ns() - t0) / 1e6 / runs
        print(f"  {runs} creates, one at a time: {made:.2f} ms each on average", flush=True)
        index.open()
        print("  " + await asyncio.to_thread(wait_quiet, quiet), flush=True)
        pids = [*worker.pids(), server.pid]
        mark = cpu_mark(pids)
        results = await api_calls(client, index, calls)
        others = others_cores(mark, cpu_mark(pids))
    finally:
        index.close()
        if client is not None:
            await client.close()
        if worker is not None:
            await worker.stop()
        await server.stop()
    print(f"  ({load_note(others)}, not counting the worker and nats-server)")
    for name, values in results:
        print(stats_line(name, values))
    e2e, direct = results[1][1], results[2][1]
    print(
        f"  => the API adds {pct(e2e, 0.5) - pct(direct, 0.5):.3f} ms at p50, "
        f"{pct(e2e, 0.99) - pct(direct, 0.99):.3f} ms at p99 to the index figures"
    )


# --- main ------------------------------------------------------------------------------------


class BenchTimeoutError(Exception):
    pass


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise BenchTimeoutError("the benchmark ran out of time (--timeout)")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100000,1000000", help="index sizes, comma-separated")
    parser.add_argument("--quick", action="store_true", help="20k runs only, fewer calls")
    parser.add_argument("--reps", type=int, default=200, help="calls per query kind")
    parser.add_argument("--budget", type=float, default=30.0, help="max seconds per query kind")
    parser.add_argument("--quiet", type=float, default=300.0, help="max wait for an idle machine")
    parser.add_argument("--api-runs", type=int, default=200, help="runs created for the API part")
    parser.add_argument("--api-calls", type=int, default=500, help="timed list calls")
    parser.add_argument("--no-api", action="store_true", help="skip the NATS part")
    parser.add_argument("--no-what-if", action="store_true", help="skip the candidate fixes")
    parser.add_argument("--timeout", type=int, default=3600, help="hard limit, seconds")
    args = parser.parse_args(argv)
    args.sizes = [20_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    if args.quick:
        args.reps, args.api_calls, args.quiet = min(args.reps, 50), 100, min(args.quiet, 30.0)
    return args


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    TMP_PARENT.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=TMP_PARENT, prefix="list-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(OSError):
            TMP_PARENT.rmdir()  # only when no other run is using it


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(args.timeout)
    print(
        f"list bench: sizes {args.sizes}, {args.reps} calls a kind (budget {args.budget:.0f} s), "
        f"SQLite {sqlite3.sqlite_version}, Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} cores, load {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        flush=True,
    )
    try:
        with scratch() as tmp:
            for size in args.sizes:
                bench_size(tmp, size, args)
            if not args.no_api:
                coro = api_overhead(tmp, args.api_runs, args.api_calls, args.quiet)
                asyncio.run(asyncio.wait_for(coro, args.quiet + 600))
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        signal.alarm(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
