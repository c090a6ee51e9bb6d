"""A harness for tests against a real worker: the launcher and readiness wait, an event factory
and waits for runs and explanations. The pytest plugin (``worker.pytest_plugin``, fixtures
``rmos_*``) is built on it, and so are this project's own tests and benchmarks (``bench/``:
groups of ``processes``, their pids for CPU accounting, ``die_with_parent``).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from contracts.canonical import derive_run_id
from worker.client import RunsApiError, RunsClient
from worker.processes import die_with_parent as _die_with_parent

T = TypeVar("T")

PROBE_RUN = "run_" + "0" * 32  # asked for by the readiness wait: never a real run
_EVENT_IDS = itertools.count(1)
_SIBLINGS = re.compile(r"started \d+ more worker processes: \[([\d, ]*)\]")


def event(event_id: str | None = None, source: str = "engine-a", **fields: Any) -> dict[str, Any]:
    """A valid OK/GREEN run event (``event_id`` a fresh one unless given); ``fields`` override
    or add (None removes a key)."""
    body: dict[str, Any] = {
        "schema": "rmos.run_event.v1",
        "event_id": event_id or f"evt-{os.getpid()}-{next(_EVENT_IDS)}",
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


class WorkerExited(RuntimeError):
    """The worker process exited while it was expected to run (its log tail in the message)."""


class WorkerProcess:
    """``rmos-runs worker`` as a child process, as an operator would run it (``module``: another
    entry point with the same command line, e.g. a test's crashing worker; ``cwd`` where it
    runs, the caller's by default). Its output goes to ``log_path``, by default a file beside
    ``data_dir``; its siblings (``processes``) write there too.

    ``processes``: a group of that many (``--processes N``), and the readiness wait waits for
    each to say it is ready; None leaves the count to the environment (``RMOS_PROCESSES``) and
    waits for one. ``die_with_parent``: the worker gets SIGTERM when the process that started
    it dies (Linux), so a killed benchmark or test run leaves no worker behind."""

    started: ClassVar[list[WorkerProcess]] = []  # reaped after each test, even a failed one

    def __init__(
        self,
        nats_url: str | None,
        data_dir: Path,
        env: Mapping[str, str] | None = None,
        module: str = "worker.cli",
        cwd: Path | None = None,
        *,
        log_path: Path | None = None,
        processes: int | None = None,
        die_with_parent: bool = False,
    ) -> None:
        self.nats_url = nats_url
        self.data_dir = data_dir
        self.env = dict(env or {})
        self.module = module
        self.cwd = cwd
        self.log_path = log_path or data_dir.parent / f"{data_dir.name}-worker-{id(self):x}.log"
        self.processes = processes
        self.die_with_parent = die_with_parent
        self.proc: asyncio.subprocess.Process | None = None
        self.spawned_at = math.nan  # time.perf_counter() when it was last started
        self._ready_before = 0
        self._log_offset = 0  # where this start's output begins in the log

    @property
    def pid(self) -> int | None:
        """The first process's pid (the one started; None before :meth:`start`)."""
        return self.proc.pid if self.proc is not None else None

    async def start(
        self, client: RunsClient | None = None, timeout: float = 30.0, *args: str
    ) -> None:
        """Start it (``nats_url=None``: with its embedded server); ``args`` go to the CLI.
        With ``client``, wait until it is ready (:meth:`wait_ready`)."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        env.pop("RMOS_NATS_URL", None)
        self._ready_before = self.ready_lines()
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        url = ["--nats-url", self.nats_url] if self.nats_url else []
        group = ["--processes", str(self.processes)] if self.processes is not None else []
        preexec = _die_with_parent if self.die_with_parent else None
        log = self.log_path.open("ab")
        self.spawned_at = time.perf_counter()
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", self.module, "worker", *url, "--data-dir", str(self.data_dir),
            *group, *args, stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL, env=env,
            cwd=self.cwd, preexec_fn=preexec,
        )  # fmt: skip
        log.close()
        WorkerProcess.started.append(self)
        if client is not None:
            await self.wait_ready(client, timeout)

    async def wait_ready(self, client: RunsClient, timeout: float = 30.0) -> float:
        """Ready = answers api.get (CONTRACT section 0) and this process says so in its log
        (another worker of the same queue group may be the one answering), each of its
        ``processes`` if given. Returns the seconds since it was spawned."""
        wanted = self._ready_before + (self.processes or 1)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            assert self.proc is not None
            self.check_alive()
            try:
                await client.request("get", {"run_id": PROBE_RUN})
            except RunsApiError:
                if self.ready_lines() >= wanted:
                    return time.perf_counter() - self.spawned_at
            except Exception:
                pass
            await asyncio.sleep(0.05)
        raise TimeoutError(f"worker not ready after {timeout}s:\n{self.log()}")

    def check_alive(self) -> None:
        """Raise :class:`WorkerExited` if it was started and has exited."""
        if self.proc is not None and self.proc.returncode is not None:
            raise WorkerExited(f"worker exited with {self.proc.returncode}:\n{self.log()}")

    def pids(self) -> list[int]:
        """The group's pids: the first process, then the siblings it started (``processes``),
        as it logged them before its own start-up (so an embedded nats-server, also its child,
        is not one); empty before :meth:`start`."""
        if self.proc is None:
            return []
        text = ""
        if self.log_path.exists():
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)  # this start's output only
                text = log.read().decode(errors="replace")
        found = _SIBLINGS.findall(text)
        siblings = found[-1].split(",") if found else []
        return [self.proc.pid, *(int(pid) for pid in siblings if pid.strip())]

    def ready_lines(self) -> int:
        if not self.log_path.exists():
            return 0
        return self.log_path.read_text(errors="replace").count("rmos-runs worker ready")

    def log(self, chars: int = 5000) -> str:
        """The log's last ``chars`` characters (every start's output, appended)."""
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

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

    async def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, SIGKILL if it is still running after ``timeout``; no longer one of
        :attr:`started`. Returns the exit code (negative: the signal), None if never started."""
        if self in WorkerProcess.started:
            WorkerProcess.started.remove(self)
        if self.proc is None:
            return None
        try:
            return await self.terminate(timeout)
        except TimeoutError:
            await self.kill()
            return self.proc.returncode


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


async def wait_for_run(client: RunsClient, run_id: str, timeout: float = 20.0) -> dict[str, Any]:
    """The run's artifact once ``get`` finds it (stored: durable, and answerable)."""

    async def probe() -> dict[str, Any] | None:
        try:
            return await client.get(run_id)
        except RunsApiError as exc:
            if exc.code != "RUN_NOT_FOUND":
                raise
            return None

    return await eventually(probe, timeout)


def run_id_of(event: dict[str, Any]) -> str:
    """The run id the worker gives an event: its own ``run_id``, or the one derived from its
    source and event id (CONTRACT section 1)."""
    return str(event.get("run_id") or derive_run_id(event["source"], event["event_id"]))


async def wait_for_explanation(
    client: RunsClient, run_id: str, status: str, timeout: float = 20.0
) -> dict[str, Any]:
    """The run's artifact once its ``explanation_status`` is ``status`` (NONE, PENDING, READY,
    ERROR); a TimeoutError says the status it had last."""
    last: list[str] = []

    async def probe() -> dict[str, Any] | None:
        run = await wait_for_run(client, run_id, timeout)
        last[:] = [run.get("explanation_status", "?")]
        return run if last[0] == status else None

    try:
        return await eventually(probe, timeout)
    except TimeoutError:
        raise TimeoutError(
            f"{run_id}: explanation_status {last[0] if last else 'unknown'}, not {status}, "
            f"after {timeout}s"
        ) from None
