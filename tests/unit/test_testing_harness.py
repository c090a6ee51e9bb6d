"""``worker.testing.WorkerProcess`` against a stand-in worker (a module with the worker's command
line that prints what a worker prints): the group's pids, the readiness wait for each process
of a group, a crash seen, the tie to the parent's life, the stop."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, cast

import pytest

from worker.client import RunsApiError, RunsClient
from worker.testing import WorkerExited, WorkerProcess

FAKE = """
import argparse, ctypes, ctypes.util, os, signal, sys, time

parser = argparse.ArgumentParser()
parser.add_argument("role")
parser.add_argument("--nats-url")
parser.add_argument("--data-dir")
parser.add_argument("--processes", type=int, default=1)
parser.add_argument("--exit", type=int)
args = parser.parse_args()
if args.exit is not None:
    sys.exit(args.exit)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
deathsig = ctypes.c_int(0)
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.prctl(2, ctypes.byref(deathsig))  # PR_GET_PDEATHSIG
print(f"pdeathsig {deathsig.value}", flush=True)
pid = os.getpid()
if args.processes > 1:
    siblings = [pid * 10 + i for i in range(1, args.processes)]
    print(f"INFO started {args.processes - 1} more worker processes: {siblings}", flush=True)
for _ in range(args.processes):
    time.sleep(0.2)
    print("INFO rmos-runs worker ready: files store", flush=True)
time.sleep(60)
"""

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the stand-in uses prctl")


class AnsweringClient:
    """Answers every ``get`` as a ready worker does: RUN_NOT_FOUND."""

    async def request(self, op: str, body: dict[str, Any]) -> dict[str, Any]:
        raise RunsApiError("RUN_NOT_FOUND", "no such run", {})


CLIENT = cast(RunsClient, AnsweringClient())


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "fake_worker.py").write_text(FAKE)
    return tmp_path


def fake(home: Path, **kwargs: Any) -> WorkerProcess:
    return WorkerProcess(
        "nats://127.0.0.1:1", home / "data", module="fake_worker", cwd=home, **kwargs
    )


async def test_group_pids_and_readiness(home: Path) -> None:
    """``processes=3``: ``--processes 3`` given, ready once all three said so, the siblings'
    pids as the first logged them (this start's only); ``stop`` leaves ``started``."""
    worker = fake(home, processes=3)
    await worker.start()
    assert worker.pid is not None
    seconds = await worker.wait_ready(CLIENT, timeout=10)
    assert worker.ready_lines() == 3, worker.log()
    assert seconds >= 0.6
    assert worker.pids() == [worker.pid, worker.pid * 10 + 1, worker.pid * 10 + 2]
    assert await worker.stop(timeout=10) == 0
    assert worker not in WorkerProcess.started

    worker.processes = 2  # a restart on the same log: its own siblings, its own ready lines
    await worker.start(CLIENT, 10)
    assert worker.ready_lines() == 5
    assert worker.pids() == [worker.pid, worker.pid * 10 + 1]
    await worker.stop(timeout=10)


async def test_single_process(home: Path) -> None:
    """No ``processes``: no ``--processes`` flag, one ready line awaited, one pid; not tied
    to the parent's life unless asked."""
    worker = fake(home)
    await worker.start(CLIENT, 10)
    assert worker.pids() == [worker.pid]
    assert "pdeathsig 0" in worker.log()
    await worker.stop(timeout=10)


async def test_die_with_parent(home: Path) -> None:
    worker = fake(home, die_with_parent=True, log_path=home / "own.log")
    await worker.start(CLIENT, 10)
    assert worker.log_path == home / "own.log"
    assert "pdeathsig 15" in worker.log()
    await worker.stop(timeout=10)


async def test_exit_seen(home: Path) -> None:
    """A worker that exits: the readiness wait and ``check_alive`` raise ``WorkerExited``."""
    worker = fake(home)
    await worker.start(None, 10, "--exit", "3")
    assert worker.proc is not None
    await worker.proc.wait()
    with pytest.raises(WorkerExited, match="exited with 3"):
        await worker.wait_ready(CLIENT, timeout=10)
    with pytest.raises(WorkerExited):
        worker.check_alive()
    assert await worker.stop() == 3
    assert worker.pids() == [worker.pid]


async def test_stop_before_start(home: Path) -> None:
    worker = fake(home)
    assert worker.pids() == []
    assert await worker.stop() is None
    worker.check_alive()  # never started: nothing to say
