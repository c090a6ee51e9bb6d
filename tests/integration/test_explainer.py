"""Explainers built on the SDK (``worker.explainer``), against a real worker and nats-server: a
team's ten-line function run with ``--model``, an exception that becomes ERROR, concurrency,
timeouts, a failure of the explainer's own retried, a graceful stop that hands work back; and
the reference explainer started before the worker, waiting for the worker's stream (saying so
once) instead of exiting with "stream not found"."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from contracts.canonical import derive_run_id
from tests.integration.test_lifecycle import blocked_run, run_at
from tests.support import ROOT, WorkerProcess, event, eventually
from worker import explainer as sdk
from worker.client import RunsClient
from worker.nats_server import NatsServer

pytestmark = pytest.mark.integration
WAITING = "waiting for stream RMOS_EXPLAIN"


class Explainer:
    """``rmos-runs explainer`` as a child process, its output in a file."""

    def __init__(
        self, url: str, log_path: Path, *args: str, env: dict[str, str] | None = None
    ) -> None:
        self.url = url
        self.log_path = log_path
        self.args = args
        self.env = env or {}
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RMOS_")}
        with self.log_path.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "worker.cli", "explainer", "--nats-url", self.url,
                *self.args, stdout=out, stderr=out, stdin=asyncio.subprocess.DEVNULL,
                env={**env, "PYTHONUNBUFFERED": "1", **self.env}, cwd=ROOT,
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


TEAM_EXPLAINER = """
from worker.explainer import Explanation

def explain(run):
    decision = run["decision"]
    if decision["risk_level"] == "RED":
        raise ValueError("a red run needs a human")
    why = ", ".join(decision.get("warnings", [])) or "no warnings"
    return Explanation(summary=f"{run['tool_id']} {run['status']}: {why}", text=str(decision))

explain.explainer_id = "team-x"
"""


async def test_a_ten_line_explainer_runs_with_model(
    worker: WorkerProcess, client: RunsClient, nats_server: NatsServer, tmp_path: Path
) -> None:
    """A team's function, nothing else: READY with its summary, its text stored and named in
    the advisory; its exception becomes ERROR with the message."""
    (tmp_path / "team_explainer.py").write_text(TEAM_EXPLAINER)
    process = Explainer(
        nats_server.url, tmp_path / "team.log", "--model", "team_explainer:explain",
        env={"PYTHONPATH": str(tmp_path)},
    )  # fmt: skip
    await process.start()
    try:
        decision = {"risk_level": "YELLOW", "warnings": ["thin wall"]}
        warned = event("warned", status="BLOCKED", decision=decision)
        red = event("red", status="BLOCKED", decision={"risk_level": "RED"})
        for body in (warned, red):
            await client.publish_event(body)
        ready = await run_at(
            client, derive_run_id("engine-a", "warned"), explanation_status="READY"
        )
        failed = await run_at(client, derive_run_id("engine-a", "red"), explanation_status="ERROR")
    finally:
        assert await process.terminate() == 0
    assert ready["explanation_summary"] == "saw-0.8mm BLOCKED: thin wall"
    [advisory] = ready["advisory_inputs"]
    assert (advisory["engine_id"], advisory["kind"]) == ("team-x", "explanation")
    text, headers = await client.get_attachment(advisory["sha256"])
    assert "thin wall" in text.decode()
    assert headers["Rmos-Kind"] == "explanation"
    assert (await client.verify(ready["run_id"])).valid
    assert failed["explanation_error"] == "ValueError: a red run needs a human"
    assert "Traceback" in process.log()  # the model's failure is logged with its traceback
    assert "patched" in process.log()


def blocked(event_id: str) -> dict[str, Any]:
    return event(event_id, status="BLOCKED", decision={"risk_level": "YELLOW"})


async def test_concurrency_is_bounded(
    worker: WorkerProcess, client: RunsClient, nats_server: NatsServer
) -> None:
    """An async model, 8 requests, concurrency 3: never more than 3 at once, all READY."""
    running, most = 0, 0

    async def explain(run: dict[str, Any]) -> str:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.3)
        running -= 1
        return f"explained {run['run_id']}"

    async with sdk.Explainer(explain, nats_server.url, concurrency=3):
        for i in range(8):
            await client.publish_event(blocked(f"c{i}"))
        for i in range(8):
            run_id = derive_run_id("engine-a", f"c{i}")
            await run_at(client, run_id, explanation_summary=f"explained {run_id}")
    assert most == 3


async def test_a_model_that_does_not_answer_is_an_error(
    worker: WorkerProcess, client: RunsClient, nats_server: NatsServer
) -> None:
    """A sync model that blocks past the timeout: ERROR saying so, the service still answers."""

    def explain(run: dict[str, Any]) -> str:
        if run["run_id"] == derive_run_id("engine-a", "stuck"):
            time.sleep(3)
        return "fine"

    async with sdk.Explainer(explain, nats_server.url, timeout=0.5):
        await client.publish_event(blocked("stuck"))
        await client.publish_event(blocked("quick"))
        stuck = await run_at(client, derive_run_id("engine-a", "stuck"), explanation_status="ERROR")
        await run_at(client, derive_run_id("engine-a", "quick"), explanation_summary="fine")
    assert stuck["explanation_error"] == "explain did not answer within 0.5 s"


async def test_a_failure_of_its_own_is_retried(
    worker: WorkerProcess, client: RunsClient, nats_server: NatsServer
) -> None:
    """The worker goes away while a request is explained: the attachment cannot be stored, the
    request comes back, and once the worker is back the run is READY."""
    worker_gone = asyncio.Event()
    calls = 0

    async def explain(run: dict[str, Any]) -> str:
        nonlocal calls
        calls += 1
        await worker_gone.wait()
        return "explained at last"

    def called(times: int) -> Callable[[], Awaitable[bool | None]]:
        async def probe() -> bool | None:
            return True if calls >= times else None

        return probe

    async with sdk.Explainer(explain, nats_server.url):
        await client.publish_event(blocked("retried"))
        await eventually(called(1), timeout=20)
        assert await worker.terminate() == 0
        worker_gone.set()
        await eventually(called(2), timeout=20)  # it came back
        await worker.start(client)
        await run_at(
            client, derive_run_id("engine-a", "retried"), explanation_summary="explained at last"
        )


async def test_a_graceful_stop_hands_unfinished_work_back(
    worker: WorkerProcess, client: RunsClient, nats_server: NatsServer
) -> None:
    """Stopped while a model hangs: after the graceful timeout the request is handed back at
    once (not after the ack wait), and another instance explains it."""
    started = asyncio.Event()

    async def hangs(run: dict[str, Any]) -> str:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("never")

    first = sdk.Explainer(hangs, nats_server.url, graceful_timeout=0.2)
    await first.start()
    try:
        await client.publish_event(blocked("handed"))
        await asyncio.wait_for(started.wait(), 20)
    finally:
        await first.stop()
    handed_back = time.monotonic()

    def quick(run: dict[str, Any]) -> str:
        return "by the second"

    async with sdk.Explainer(quick, nats_server.url):
        run_id = derive_run_id("engine-a", "handed")
        await run_at(client, run_id, explanation_summary="by the second")
    assert time.monotonic() - handed_back < sdk.ACK_WAIT_S / 2
