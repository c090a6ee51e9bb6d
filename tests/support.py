"""Helpers for this project's tests that run real processes. The worker launcher, the event
factory and the waits are the shipped harness (``worker.testing``, the pytest plugin's too)."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Mapping
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar

import nats.js.errors
import pytest
from nats.js import JetStreamContext

from worker.client import RunsClient
from worker.testing import PROBE_RUN, WorkerProcess, event, eventually, wait_for_run

__all__ = ["PROBE_RUN", "WorkerProcess", "event", "eventually", "stored"]
stored = wait_for_run  # the tests' short name

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
# Runs a test (or every test of a class) once per store: a files store on one nats-server, and a
# jetstream store on a fresh 3-node cluster (the ``store`` fixture of tests/conftest.py).
BOTH_STORES = pytest.mark.parametrize("store", ["files", "jetstream"], indirect=True)


async def dead_letters(
    js: JetStreamContext, stream: str = "RMOS_DLQ"
) -> list[tuple[dict[str, Any], dict[str, str]]]:
    """Every dead letter stored so far, as (body, headers), oldest first."""
    try:
        info = await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        return []
    out: list[tuple[dict[str, Any], dict[str, str]]] = []
    if not info.state.messages:
        return out
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(stream, seq)
        out.append((json.loads(msg.data or b"{}"), dict(msg.headers or {})))
    return out


async def wait_settled(js: JetStreamContext, timeout: float = 30.0) -> None:
    """Until every event in the stream is settled (acked or terminated) by the worker."""

    async def probe() -> bool | None:
        stream = await js.stream_info("RMOS_RUN_EVENTS")
        info = await js.consumer_info("RMOS_RUN_EVENTS", "rmos-worker-events")
        floor = info.ack_floor.stream_seq if info.ack_floor else 0
        settled = info.num_pending == 0 and info.num_ack_pending == 0
        return True if settled and floor == stream.state.last_seq else None

    await eventually(probe, timeout)


def _places(data_dir: Path) -> dict[str, tuple[int, int, int]]:
    """run id -> (segment, offset, length) of its current bytes, from a files store's
    ``log.sqlite`` read behind the worker's back; {} until the store has opened it."""
    path = data_dir / "log.sqlite"
    if not (data_dir / "segments").is_dir() or not path.is_file():
        return {}
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        try:
            rows = db.execute("SELECT run_id, segment, offset, length FROM places").fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):  # the store is opening: its tables come next
                return {}
            raise
    return {row[0]: tuple(row[1:]) for row in rows}


def _segment(data_dir: Path, segment: int) -> Path:
    return data_dir / "segments" / f"{segment:08d}.jsonl"


def stored_artifacts(data_dir: Path) -> dict[str, bytes]:
    """Every run of a files store's data dir and its current bytes, by run id."""
    out = {}
    for run_id, (segment, offset, length) in sorted(_places(data_dir).items()):
        with _segment(data_dir, segment).open("rb") as f:
            f.seek(offset)
            out[run_id] = f.read(length)
    return out


def rewrite_stored(data_dir: Path, run_id: str, data: bytes) -> None:
    """Replace a run's current bytes behind the worker's back, as someone with the disk could:
    the new bytes in a segment file of their own, the run's place moved to them."""
    with closing(sqlite3.connect(data_dir / "log.sqlite")) as db, db:
        segment = db.execute("INSERT INTO segments (started_at) VALUES ('forged')").lastrowid
        assert segment is not None
        _segment(data_dir, segment).write_bytes(data + b"\n")
        moved = db.execute(
            "UPDATE places SET segment = ?, offset = 0, length = ? WHERE run_id = ?",
            (segment, len(data), run_id),
        )
        assert moved.rowcount == 1, f"{run_id} is not stored in {data_dir}"


def delete_stored(data_dir: Path, run_id: str) -> None:
    """Remove a run from a files store behind the worker's back (its place)."""
    with closing(sqlite3.connect(data_dir / "log.sqlite")) as db, db:
        gone = db.execute("DELETE FROM places WHERE run_id = ?", (run_id,))
        assert gone.rowcount == 1, f"{run_id} is not stored in {data_dir}"


async def run_count(client: RunsClient, data_dir: Path) -> int:
    """Runs in the worker's store: places in its data dir (files store), else keys of the
    ``RMOS_RUNS`` bucket (jetstream store; one value a key)."""
    if (data_dir / "segments").is_dir():
        return len(_places(data_dir))
    return (await client.js.stream_info("KV_RMOS_RUNS")).state.messages


async def tamper(
    client: RunsClient, data_dir: Path, run_id: str, change: Callable[[bytes], bytes]
) -> None:
    """Rewrite a stored artifact's bytes with ``change``, behind the worker's back: in its
    data dir (files store), else its value in the ``RMOS_RUNS`` bucket (jetstream store)."""
    if (data_dir / "segments").is_dir():
        rewrite_stored(data_dir, run_id, change(stored_artifacts(data_dir)[run_id]))
        return
    subject = f"$KV.RMOS_RUNS.{run_id}"
    stored = await client.js.get_msg("KV_RMOS_RUNS", subject=subject)
    await client.js.publish(subject, change(stored.data or b""))


def temp_files(data_dir: Path) -> list[Path]:
    """Temp files and intents left anywhere under the data dir's scratch space."""
    return sorted(p for p in (data_dir / "tmp").rglob("*") if p.suffix in {".tmp", ".intent"})


def indexed_runs(data_dir: Path) -> set[str]:
    """The run ids in the ``list`` index (read directly, as a projection check)."""
    with sqlite3.connect(data_dir / "index.sqlite") as db:
        return {row[0] for row in db.execute("SELECT run_id FROM runs")}


async def attached_blob(
    client: RunsClient, data: bytes, filename: str = "a.nc", kind: str = "gcode"
) -> dict[str, Any]:
    """Put a blob and return the ``attachments`` entry an event names it with."""
    put = await client.put_attachment(data, kind=kind, mime="text/plain", filename=filename)
    return {
        "sha256": put.sha256,
        "kind": kind,
        "mime": "text/plain",
        "filename": filename,
        "size_bytes": put.size_bytes,
    }


class SmallDisk:
    """A small tmpfs of its own (mounting needs root), to be filled up and given space again."""

    def __init__(self, path: Path, size_mib: int = 32) -> None:
        self.path = path
        self.size_mib = size_mib
        self._filler = path / "filler"

    def mount(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.size_mib}m", "tmpfs", str(self.path)],
            check=True,
            capture_output=True,
        )

    def unmount(self) -> None:
        # Lazy: a worker still holding files in it is reaped after this fixture.
        subprocess.run(["umount", "-l", str(self.path)], check=False, capture_output=True)

    def fill(self) -> None:
        """Take every free byte: the next write of anything fails with ENOSPC."""
        fd = os.open(self._filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            for chunk in (1 << 20, 4096, 1):
                block = b"\0" * chunk
                while True:
                    try:
                        os.write(fd, block)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        finally:
            os.close(fd)

    def free(self) -> None:
        self._filler.unlink(missing_ok=True)


async def run_cli(*args: str, env: Mapping[str, str], timeout: float) -> tuple[int, str]:
    """``rmos-runs ARGS`` as a subprocess with no ``RMOS_*`` setting but ``env``: its exit code
    and its output (stdout and stderr together); killed if it runs past ``timeout``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RMOS_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL, env={**clean, "PYTHONUNBUFFERED": "1", **env}, cwd=ROOT,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def assert_audited(url: str, data: Path, runs: int) -> None:
    """``rmos-runs audit`` finds the store and the Merkle log consistent: one leaf a run."""
    code, out = await run_cli(
        "audit", "--nats-url", url, "--data-dir", str(data), env={}, timeout=120
    )
    assert code == 0, out
    assert f"audit: {runs} runs, {runs} revisions, {runs} leaves" in out, out
