"""Merkle log benchmark (issue 11): its cost on ingest, proofs at 1M leaves, audit throughput.

All in-process on this machine, stores under ``.bench-tmp/`` (the /work disk), removed at the end:

1. ingest   ``FileStore.create_runs`` of N realistic artifacts, 256 a group commit (the worker's
            batch), with the log and without it (no leaf appended), alternating in
            one run, each on a fresh data dir; runs/s, median of ``--repeats``. The ratio is
            what the log costs the group commit (the worker's end-to-end rate includes NATS on
            top, so its ratio is closer to 1).
1b. e2e    the real worker (``python -m worker.cli worker``, and ``bench/unlogged_worker.py``: the
            same with no leaf appended) draining a backlog of N events on its own
            nats-server (``ingest_bench``'s phase 2b), alternating, median of ``--repeats``.
2. proofs   a log of ``--leaves`` leaves (default 1M, appended 1000 a transaction); then for
            ``--samples`` random leaves: inclusion proof from the SQLite nodes, its verification,
            and ``verify``'s whole log part in-process (``Proofs.run_log`` minus the network:
            the run's leaves, ``run_checks``, the proof, the client's check); consistency proofs
            between random sizes. p50 / p99 and proof sizes.
3. audit    ``rmos-runs audit``'s pass (``worker.audit``'s ``_run``) over a files store of
            ``--runs`` runs, a third of them at revision 3; runs/s, median of ``--repeats``.

Usage: .venv/bin/python bench/log_bench.py [--events N] [--leaves L] [--runs R] [--repeats K]
       [--samples S] [--quick] [--phases ingest,e2e,proofs,audit]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ingest_bench import SETTINGS, backlog_rep, prepare
from ingest_bench import Config as IngestConfig

from contracts import merkle
from contracts.transparency import leaf_hash, leaf_record
from worker.audit import _run as audit_pass
from worker.core.ingest import content_sha256
from worker.core.log_checks import Audit, run_checks
from worker.store.base import Change, NewRun
from worker.store.files import FileStore
from worker.store.merkle_log import MerkleLog
from worker.store.revisions import created_entry

ROOT = Path(__file__).resolve().parent.parent / ".bench-tmp" / "log"
BATCH = 256


def artifact(n: int) -> dict[str, Any]:
    """A realistic ~1.1 KB artifact, as the worker stores one."""
    run_id = f"run_{n:032x}"
    body: dict[str, Any] = {
        "schema": "rmos.run_artifact.v1",
        "run_id": run_id,
        "event_id": f"evt-{n:08d}",
        "source": "engine-a",
        "mode": "rosette",
        "tool_id": f"saw-{n % 7}",
        "event_type": "feasibility",
        "status": "OK" if n % 5 else "BLOCKED",
        "revision": 1,
        "created_at_utc": f"2026-12-01T10:{(n // 60) % 60:02d}:{n % 60:02d}.{n % 10**6:06d}+00:00",
        "recorded_at_utc": "2026-12-01T10:00:00.000000+00:00",
        "updated_at_utc": "2026-12-01T10:00:00.000000+00:00",
        "feasibility": {"max_depth_mm": 1.2, "ok": True, "passes": n % 9},
        "decision": {"risk_level": "GREEN", "score": 90, "warnings": ["feed high"] * 3},
        "hashes": {"event_sha256": f"{n:064x}", "feasibility_sha256": f"{n + 1:064x}"},
        "request_summary": {"keys": ["design", "context"], "tool_id": f"saw-{n % 7}"},
        "explanation_status": "NONE",
        "notes": "x" * 400,
        "meta": {},
    }
    body["content_sha256"] = content_sha256(body)
    return body


def median_rate(samples: list[float]) -> float:
    return statistics.median(samples)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def ingest_once(data_dir: Path, events: int, logged: bool) -> float:
    shutil.rmtree(data_dir, ignore_errors=True)
    store = FileStore(data_dir)
    await store.open()
    real = MerkleLog._append_in
    if not logged:
        MerkleLog._append_in = lambda self, db, records: []  # type: ignore[method-assign]
    try:
        runs = [artifact(n) for n in range(events)]
        started = time.perf_counter()
        for start in range(0, events, BATCH):
            batch = runs[start : start + BATCH]
            await store.create_runs([NewRun(a["run_id"], a) for a in batch])
        elapsed = time.perf_counter() - started
    finally:
        MerkleLog._append_in = real  # type: ignore[method-assign]
        store.close()
    return events / elapsed


async def phase_ingest(events: int, repeats: int) -> None:
    rates: dict[bool, list[float]] = {True: [], False: []}
    for repeat in range(repeats):
        for logged in (False, True):
            rate = await ingest_once(ROOT / f"ingest-{repeat}-{logged}", events, logged)
            rates[logged].append(rate)
    with_log, without = median_rate(rates[True]), median_rate(rates[False])
    print(f"1. ingest  {events} runs, {BATCH} a commit, median of {repeats}:")
    print(f"   without the log {without:9.0f} runs/s   {[round(r) for r in rates[False]]}")
    print(f"   with the log    {with_log:9.0f} runs/s   {[round(r) for r in rates[True]]}")
    print(f"   ratio {with_log / without:.2f} (target >= 0.9)")


async def phase_e2e(events: int, repeats: int) -> None:
    cfg = IngestConfig(
        events=events, stored=0, reps=repeats, batch=SETTINGS.batch_size, in_flight=1000,
        trickle=0, trickle_rate=100.0, integral_floats=False, profile=None, quiet_s=0.0,
        processes=1,
    )  # fmt: skip
    rates: dict[str, list[float]] = {"worker.cli": [], "bench.unlogged_worker": []}
    cpu: dict[str, list[float]] = {name: [] for name in rates}
    for repeat in range(repeats):
        for module in ("bench.unlogged_worker", "worker.cli"):
            work = ROOT / f"e2e-{repeat}-{module}"
            rep = await backlog_rep(cfg, work, prepare(f"e2e{repeat}", events, False), 1, module)
            rates[module].append(rep.rate)
            cpu[module].append(rep.cpu["worker"])
    with_log, without = (statistics.median(rates[m]) for m in rates)
    cpu_with, cpu_without = (statistics.median(cpu[m]) for m in cpu)
    print(f"1b. e2e   the worker draining a backlog of {events} events, median of {repeats}:")
    for name, module, rate, us in (
        ("without the log", "bench.unlogged_worker", without, cpu_without),
        ("with the log   ", "worker.cli", with_log, cpu_with),
    ):
        each = [round(r) for r in rates[module]]
        print(f"   {name} {rate:9.0f} msg/s   {us:5.0f} us CPU/event   {each}")
    print(f"   ratio {with_log / without:.2f} (target >= 0.9)")


def build_log(path: Path, leaves: int) -> MerkleLog:
    merkle_log = MerkleLog(path)
    merkle_log.open()
    if merkle_log.size() == leaves:
        return merkle_log
    started = time.perf_counter()
    template = leaf_record(artifact(0), created_entry(artifact(0)))
    for start in range(merkle_log.size(), leaves, 1000):
        merkle_log.append(
            [
                {**template, "run_id": f"run_{n:032x}"}
                for n in range(start, min(start + 1000, leaves))
            ]
        )
    print(f"   built {leaves} leaves in {time.perf_counter() - started:.0f} s")
    return merkle_log


def timed(fn: Callable[[], Any], samples: int) -> list[float]:
    out = []
    for _ in range(samples):
        started = time.perf_counter()
        fn()
        out.append((time.perf_counter() - started) * 1000)
    return out


def show(name: str, ms: list[float]) -> None:
    print(f"   {name:34s} p50 {percentile(ms, 0.5):6.3f} ms   p99 {percentile(ms, 0.99):6.3f} ms")


def phase_proofs(leaves: int, samples: int) -> None:
    print(f"2. proofs  at {leaves} leaves, {samples} samples each:")
    merkle_log = build_log(ROOT / f"proofs-{leaves}.sqlite", leaves)
    size, root = merkle_log.head()
    rng = random.Random(7)
    picks = [rng.randrange(size) for _ in range(samples)]
    it = iter(picks)
    sizes: list[int] = []

    def inclusion() -> None:
        sizes.append(len(merkle_log.inclusion(next(it), size)))

    show("inclusion proof (SQLite nodes)", timed(inclusion, samples))
    proofs = [(i, merkle_log.inclusion(i, size)) for i in picks[:samples]]
    records = {leaf.index: leaf for i in picks[:samples] for leaf in merkle_log.leaves(i, i + 1)}
    it2 = iter(proofs)

    def check() -> None:
        index, path = next(it2)
        assert merkle.verify_inclusion(records[index].hash, index, size, path, root)

    show("verify_inclusion (client)", timed(check, samples))
    run = artifact(0)
    entry = created_entry(run)
    it3 = iter(picks)

    def whole() -> None:
        index = next(it3)
        logged = merkle_log.leaves_of(f"run_{index:032x}")
        run_checks(run, [entry], [leaf.record for leaf in logged])
        path = merkle_log.inclusion(logged[-1].index, size)
        assert merkle.verify_inclusion(leaf_hash(logged[-1].record), index, size, path, root)

    show("verify's log part, in-process", timed(whole, samples))
    pairs = [sorted(rng.sample(range(1, size + 1), 2)) for _ in range(samples)]
    it4 = iter(pairs)
    consistency_sizes: list[int] = []

    def consistency() -> None:
        old, new = next(it4)
        consistency_sizes.append(len(merkle_log.consistency(old, new)))

    show("consistency proof", timed(consistency, samples))
    print(
        f"   proof sizes: inclusion {min(sizes)}-{max(sizes)} hashes "
        f"({max(sizes) * 32} bytes at most, {max(sizes) * 65} as hex JSON), "
        f"consistency {min(consistency_sizes)}-{max(consistency_sizes)} hashes"
    )
    merkle_log.close()


async def phase_audit(runs: int, repeats: int) -> None:
    data_dir = ROOT / "audit"
    shutil.rmtree(data_dir, ignore_errors=True)
    store = FileStore(data_dir)
    await store.open()
    for start in range(0, runs, 1000):
        batch = [artifact(n) for n in range(start, min(start + 1000, runs))]
        await store.create_runs([NewRun(a["run_id"], a) for a in batch])
    for n in range(0, runs, 3):
        for value in ("a", "b"):
            change = Change({"meta": {"k": value}}, "meta", "bench")

            def decide(_: dict[str, Any], wanted: Change = change) -> Change:
                return wanted

            await store.update_run(f"run_{n:032x}", decide)
    store.close()
    os.sync()  # the store at rest: no writeback of the build competing with the first repeat
    rates = []
    for _ in range(repeats):
        audited = FileStore(data_dir)
        audited.log.open()
        started = time.perf_counter()
        result: Audit = await audit_pass(audited, None, [])
        elapsed = time.perf_counter() - started
        audited.log.close()
        assert not result.findings, result.findings[:5]
        rates.append(result.runs / elapsed)
    print(f"3. audit   {result.runs} runs, {result.revisions} revisions, {result.leaves} leaves:")
    shown = ", ".join(f"{rate:.0f}" for rate in rates)
    print(f"   {median_rate(rates):.0f} runs/s, median of [{shown}] (target >= 20000)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--leaves", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument(
        "--phases", default="ingest,e2e,proofs,audit", help="which phases, comma-separated"
    )
    args = parser.parse_args()
    if args.quick:
        args.events, args.leaves, args.runs, args.repeats, args.samples = 2000, 20_000, 2000, 1, 200
    ROOT.mkdir(parents=True, exist_ok=True)
    try:
        phases = set(args.phases.split(","))
        if "ingest" in phases:
            await phase_ingest(args.events, args.repeats)
        if "e2e" in phases:
            await phase_e2e(args.events, args.repeats)
        if "proofs" in phases:
            phase_proofs(args.leaves, args.samples)
        if "audit" in phases:
            await phase_audit(args.runs, args.repeats)
    finally:
        shutil.rmtree(ROOT, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
