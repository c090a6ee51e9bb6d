"""Helpers for tests that run real processes: a worker subprocess and event factories."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from worker.client import RunsApiError, RunsClient

ROOT = Path(__file__).resolve().parent.parent
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

    def __init__(
        self,
        nats_url: str,
        data_dir: Path,
        env: Mapping[str, str] | None = None,
        module: str = "worker.cli",
    ) -> None:
        self.nats_url = nats_url
        self.data_dir = data_dir
        self.env = dict(env or {})
        self.module = module
        self.log_path = data_dir.parent / f"{data_dir.name}-worker.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, client: RunsClient | None = None, timeout: float = 30.0) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        log = self.log_path.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", self.module, "worker",
            "--nats-url", self.nats_url, "--data-dir", str(self.data_dir),
            stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL, env=env, cwd=ROOT,
        )  # fmt: skip
        log.close()
        if client is not None:
            await self.wait_ready(client, timeout)

    async def wait_ready(self, client: RunsClient, timeout: float = 30.0) -> None:
        """Ready = answers api.get (CONTRACT section 0); fails fast if the process died."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            assert self.proc is not None
            if self.proc.returncode is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log()}")
            try:
                await client.request("get", {"run_id": PROBE_RUN})
            except RunsApiError:
                return
            except Exception:
                await asyncio.sleep(0.1)
        raise TimeoutError(f"worker not ready after {timeout}s:\n{self.log()}")

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
