"""``rmos-runs migrate``: copy a files data dir into the jetstream store (CONTRACT section 8).

Blobs first (a run's attachments must be there when the run is), then every run with its history,
a bounded number in flight. Each run is created only where its id is absent, so the command is
idempotent and resumable: run again after an interruption, it copies what is missing and counts
the rest as present. Every copied run is read back from the stream leader and checked: the same
bytes as the file, every ``verify`` check passing, the same history.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from worker.connection import connect_options, connector, first_connect
from worker.output import Progress, emit
from worker.settings import Settings
from worker.store.files import FileStore
from worker.store.jetstream import JetStreamStore
from worker.store.revisions import encode
from worker.streams import ensure_replicated

log = logging.getLogger(__name__)
IN_FLIGHT = 32


@dataclass
class Report:
    """What a migration did: runs by outcome, blobs copied, and what did not check out."""

    runs: Counter[str] = field(default_factory=Counter)
    blobs: int = 0
    problems: list[str] = field(default_factory=list)


async def migrate(settings: Settings, url: str) -> Report:
    """Copy ``settings.data_dir`` (a files store) into the jetstream store at ``url``."""
    source = FileStore(settings.data_dir)
    await source.open(rebuild_lost_index=False)
    nc = await first_connect(
        **connect_options(settings, "migrate", url), timeout=settings.connect_timeout_s
    )
    js = nc.jetstream()
    target = JetStreamStore(
        lambda: js,
        connector(connect_options(settings, "migrate-projection", url)),  # never used: no index
        settings.subjects,
        settings.data_dir,
        timeout=settings.publish_timeout_s,
    )
    report = Report()
    try:
        await _declare(target, settings.store_replicas)
        blobs = list(source.blob_hashes())
        await _each(blobs, "blobs", lambda sha: _copy_blob(source, target, sha, report))
        report.blobs = len(blobs)
        runs = list(source.run_ids())
        await _each(runs, "runs", lambda run_id: _copy_run(source, target, run_id, report))
    finally:
        source.close()
        await nc.close()
    return report


async def _declare(target: JetStreamStore, replicas: int | None) -> None:
    """The buckets, with 3 replicas unless set (1 when the server is not a cluster)."""

    async def declare(count: int) -> None:
        target.replicas = count
        await target.declare()

    await ensure_replicated(declare, replicas, 3)


async def _each(items: list[str], unit: str, copy: Callable[[str], Awaitable[None]]) -> None:
    progress = Progress(len(items), unit)
    done = 0
    for chunk in _chunks(items, IN_FLIGHT):
        await asyncio.gather(*(copy(item) for item in chunk))
        done += len(chunk)
        progress(done)
    progress.close()


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    return (items[i : i + size] for i in range(0, len(items), size))


async def _copy_blob(
    source: FileStore, target: JetStreamStore, sha256: str, report: Report
) -> None:
    found = await source.get_blob(sha256)
    if found is None:
        report.problems.append(f"blob {sha256}: incomplete in the data dir (no metadata)")
        return
    data, info = found
    await target.put_blob(data, kind=info.kind, mime=info.mime, filename=info.filename)
    if await target.blob_size(sha256) != len(data):
        report.problems.append(f"blob {sha256}: not found with {len(data)} bytes after copying")


async def _copy_run(source: FileStore, target: JetStreamStore, run_id: str, report: Report) -> None:
    artifact = await source.get_run(run_id)
    history = await source.history(run_id)
    if artifact is None or history is None:
        report.problems.append(f"run {run_id}: vanished from the data dir while migrating")
        return
    outcome = await target.adopt(artifact, history, [x.record for x in await source.logged(run_id)])
    report.runs[outcome] += 1
    if outcome == "conflict":
        report.problems.append(f"run {run_id}: the jetstream store holds another run of this id")
        return
    if outcome == "copied":
        report.problems += await _check(target, artifact, history)


async def _check(
    target: JetStreamStore, artifact: dict[str, object], history: list[dict[str, object]]
) -> list[str]:
    """What differs between a copied run, read back from the leader, and its source."""
    run_id = str(artifact["run_id"])
    stored = await target.get_run(run_id)
    problems = []
    if stored is None or encode(stored) != encode(artifact):
        problems.append(f"run {run_id}: read back with other bytes")
    checks = await target.verify_run(run_id) or []
    problems += [f"run {run_id}: verify {c.name} fails" for c in checks if not c.ok]
    if await target.history(run_id) != history:
        problems.append(f"run {run_id}: read back with another history")
    return problems


async def run(settings: Settings, url: str) -> int:
    """The command: migrate, print the summary and each problem; exit 1 on any problem."""
    report = await migrate(settings, url)
    runs = report.runs
    emit(
        sys.stdout,
        f"migrated {settings.data_dir}: {runs['copied']} runs copied, {runs['present']} already "
        f"present, {runs['conflict']} conflicts; {report.blobs} blobs; "
        f"{len(report.problems)} problems",
    )
    for problem in report.problems:
        emit(sys.stdout, f"  {problem}")
    return 1 if report.problems else 0
