"""Helpers for tests that run real processes: a worker subprocess and event factories."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import nats.js.errors
import pytest
from nats.js import JetStreamContext

from worker.client import RunsApiError, RunsClient

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
# Runs a test (or every test of a class) once per store: a files store on one nats-server, and a
# jetstream store on a fresh 3-node cluster (the ``store`` fixture of tests/conftest.py).
BOTH_STORES = pytest.mark.parametrize("store", ["files", "jetstream"], indirect=True)
PROBE_RUN = "run_" + "0" * 32


def event(event_id: str, source: str = "engine-a", **fields: Any) -> dict[str, Any]:
    """A valid OK/GREEN run event; ``fields`` override or add (None removes a key)."""
    body: dict[str, Any] = {
        "schema": "rmos.run_event.v1",
        "event_id": event_id,
        "source": source,
        "mode": "rosette",
        "tool_id": "saw-0.8mm",
        "event_type": "feasibility",
        "status": "OK",
        "feasibility": {"max_depth_mm": 1.2, "ok": True},
        "decision": {"risk_level": "GREEN", "score": 90},
    }
    body.update(fields)
    return {k: v for k, v in body.items() if v is not None}


class WorkerProcess:
    """``rmos-runs worker`` as a child process, as an operator would run it."""

    started: ClassVar[list[WorkerProcess]] = []  # reaped after each test, even a failed one

    def __init__(
        self,
        nats_url: str | None,
        data_dir: Path,
        env: Mapping[str, str] | None = None,
        module: str = "worker.cli",
    ) -> None:
        self.nats_url = nats_url
        self.data_dir = data_dir
        self.env = dict(env or {})
        self.module = module
        self.log_path = data_dir.parent / f"{data_dir.name}-worker-{id(self):x}.log"
        self.proc: asyncio.subprocess.Process | None = None
        self._ready_before = 0

    async def start(
        self, client: RunsClient | None = None, timeout: float = 30.0, *args: str
    ) -> None:
        """Start it (``nats_url=None``: with its embedded server); ``args`` go to the CLI."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        env.pop("RMOS_NATS_URL", None)
        self._ready_before = self.ready_lines()
        url = ["--nats-url", self.nats_url] if self.nats_url else []
        log = self.log_path.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", self.module, "worker", *url, "--data-dir", str(self.data_dir),
            *args, stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL, env=env, cwd=ROOT,
        )  # fmt: skip
        log.close()
        WorkerProcess.started.append(self)
        if client is not None:
            await self.wait_ready(client, timeout)

    async def wait_ready(self, client: RunsClient, timeout: float = 30.0) -> None:
        """Ready = answers api.get (CONTRACT section 0) and this process says so in its log
        (another worker of the same queue group may be the one answering)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            assert self.proc is not None
            if self.proc.returncode is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log()}")
            try:
                await client.request("get", {"run_id": PROBE_RUN})
            except RunsApiError:
                if self.ready_lines() > self._ready_before:
                    return
            except Exception:
                pass
            await asyncio.sleep(0.05)
        raise TimeoutError(f"worker not ready after {timeout}s:\n{self.log()}")

    def ready_lines(self) -> int:
        if not self.log_path.exists():
            return 0
        return self.log_path.read_text(errors="replace").count("rmos-runs worker ready")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path.exists() else ""

    async def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def kill(self) -> None:
        """SIGKILL: no chance to flush, ack or clean up."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()


async def eventually(check: Callable[[], Awaitable[T | None]], timeout: float = 20.0) -> T:
    """Poll ``check`` until it returns something other than None; bounded by ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await check()
        if result is not None:
            return result
        if loop.time() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.05)


async def stored(client: RunsClient, run_id: str, timeout: float = 20.0) -> dict[str, Any]:
    """The artifact once ``get`` finds it."""

    async def probe() -> dict[str, Any] | None:
        try:
            return await client.get(run_id)
        except RunsApiError as exc:
            if exc.code != "RUN_NOT_FOUND":
                raise
            return None

    return await eventually(probe, timeout)


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


def run_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "runs").glob("*/*.json"))


async def run_count(client: RunsClient, data_dir: Path) -> int:
    """Runs in the worker's store: artifact files in its data dir (files store), else keys of
    the ``RMOS_RUNS`` bucket (jetstream store; one value a key)."""
    if (data_dir / "runs").exists():
        return len(run_files(data_dir))
    return (await client.js.stream_info("KV_RMOS_RUNS")).state.messages


async def tamper(
    client: RunsClient, data_dir: Path, run_id: str, change: Callable[[bytes], bytes]
) -> None:
    """Rewrite a stored artifact's bytes with ``change``, behind the worker's back: its file
    (files store), else its value in the ``RMOS_RUNS`` bucket (jetstream store)."""
    path = data_dir / "runs" / run_id[4:6] / f"{run_id}.json"
    if path.exists():
        path.write_bytes(change(path.read_bytes()))
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
