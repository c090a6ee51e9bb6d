"""The reference explainer started before the worker: it waits for the worker's stream, saying so
once, instead of exiting with "stream not found" (issue 10, item 3)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.test_lifecycle import blocked_run, run_at
from tests.support import ROOT, WorkerProcess, eventually
from worker.client import RunsClient
from worker.nats_server import NatsServer

pytestmark = pytest.mark.integration
WAITING = "waiting for stream RMOS_EXPLAIN"


class Explainer:
    """``rmos-runs explainer`` as a child process, its output in a file."""

    def __init__(self, url: str, log_path: Path) -> None:
        self.url = url
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RMOS_")}
        with self.log_path.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "worker.cli", "explainer", "--nats-url", self.url,
                stdout=out, stderr=out, stdin=asyncio.subprocess.DEVNULL,
                env={**env, "PYTHONUNBUFFERED": "1"}, cwd=ROOT,
            )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def says(self, text: str) -> None:
        async def probe() -> bool | None:
            assert self.proc is not None
            assert self.proc.returncode is None, self.log()
            return True if text in self.log() else None

        await eventually(probe, timeout=30)

    async def terminate(self) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), 30)


@pytest.fixture
async def explainer(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Explainer]:
    started = Explainer(nats_server.url, tmp_path / "explainer.log")
    await started.start()
    try:
        yield started
    finally:
        if started.proc is not None and started.proc.returncode is None:
            started.proc.kill()
            await started.proc.wait()


async def test_waits_for_the_worker(
    explainer: Explainer, nats_server: NatsServer, client: RunsClient, tmp_path: Path
) -> None:
    await explainer.says(WAITING)
    await asyncio.sleep(3)  # a few polls: still waiting, still one line
    worker = WorkerProcess(nats_server.url, tmp_path / "data")
    await worker.start(client)
    run = await blocked_run(client)
    ready = await run_at(client, run["run_id"], explanation_status="READY")
    assert ready["explanation_summary"]
    log = explainer.log()
    assert log.count(WAITING) == 1, log
    assert "stream RMOS_EXPLAIN found" in log
    assert "Traceback" not in log
    assert await explainer.terminate() == 0
    assert await worker.terminate() == 0


async def test_stopped_while_waiting(explainer: Explainer) -> None:
    await explainer.says(WAITING)
    assert await explainer.terminate() == 0
    assert "Traceback" not in explainer.log()
