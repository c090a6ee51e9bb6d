"""A first connection to NATS that cannot succeed ends, in time, with one line saying why.

Every program (the worker, the reference explainer, a client command) against each way a first
connection fails: nothing listens, a wrong password, a certificate no CA vouches for, a server
that accepts and never answers. (A worker that did connect reconnects after a server restart:
tests/faults/test_crashes.py, ``test_nats_server_killed_mid_stream``.)
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import PROBE_RUN, WorkerProcess, eventually, run_cli
from worker.connection import ConnectError, first_connect
from worker.nats_server import NatsServer
from worker.output import Exit

pytestmark = pytest.mark.integration
CONNECT_TIMEOUT_S = 3.0
MARGIN_S = 15.0  # interpreter start-up and imports, on a busy machine
SECRETS = ("s3cret", "wrong")


@dataclass(frozen=True)
class Unreachable:
    """A NATS URL whose first connection fails, and the reason an operator should read."""

    url: str
    reason: str
    fast: bool  # a permanent error: given up before the timeout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that no CA signed, and its key."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a self-signed certificate")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def configured_server(directory: Path, config: str) -> NatsServer:
    """A server (not started yet) with a configuration file of its own."""
    directory.mkdir(parents=True)
    conf = directory / "server.conf"
    conf.write_text(config)
    return NatsServer(directory / "store", extra_args=["-c", str(conf)])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word."""
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


@pytest.fixture(params=["refused", "wrong password", "untrusted certificate", "no answer"])
async def unreachable(
    request: pytest.FixtureRequest, tmp_path: Path, silent_port: int
) -> AsyncIterator[Unreachable]:
    if request.param == "refused":
        yield Unreachable(f"nats://127.0.0.1:{free_port()}", "connection refused", False)
        return
    if request.param == "no answer":
        yield Unreachable(f"nats://127.0.0.1:{silent_port}", "timed out: no answer", False)
        return
    if request.param == "wrong password":
        config = "authorization { user: alice, password: s3cret }\n"
        scheme, reason = "nats://alice:wrong@", "authorization violation: check the user, password"
    else:  # the default CA store cannot verify it
        cert, key = self_signed(tmp_path)
        config = f'tls {{ cert_file: "{cert}", key_file: "{key}" }}\n'
        scheme, reason = "tls://", "TLS handshake failed: certificate verify failed"
    server = configured_server(tmp_path / "server", config)
    await server.start()
    try:
        yield Unreachable(f"{scheme}127.0.0.1:{server.port}", reason, True)
    finally:
        await server.stop()


async def cli(*args: str) -> tuple[int, str]:
    """``rmos-runs ARGS`` with a short connect timeout: its exit code and its output."""
    env = {"RMOS_CONNECT_TIMEOUT_S": str(CONNECT_TIMEOUT_S)}
    return await run_cli(*args, env=env, timeout=CONNECT_TIMEOUT_S + MARGIN_S)


async def run_worker(url: str, data_dir: Path) -> tuple[int, str]:
    worker = WorkerProcess(url, data_dir, env={"RMOS_CONNECT_TIMEOUT_S": str(CONNECT_TIMEOUT_S)})
    await worker.start()
    assert worker.proc is not None
    code = await asyncio.wait_for(worker.proc.wait(), CONNECT_TIMEOUT_S + MARGIN_S)
    return code, worker.log()


class TestFirstConnection:
    """Exit non-zero in time, one line of why, no traceback, no password."""

    @pytest.mark.parametrize("program", ["worker", "explainer", "client", "migrate"])
    async def test_fails_in_time_with_one_line(
        self, program: str, unreachable: Unreachable, tmp_path: Path
    ) -> None:
        """Exit 4 (NATS unreachable) whichever program."""
        started = time.monotonic()
        if program == "worker":
            code, out = await run_worker(unreachable.url, tmp_path / "data")
        elif program == "explainer":
            code, out = await cli("explainer", "--nats-url", unreachable.url)
        elif program == "migrate":
            data_dir = str(tmp_path / "data")
            code, out = await cli("migrate", "--nats-url", unreachable.url, "--data-dir", data_dir)
        else:
            code, out = await cli("get", PROBE_RUN, "--nats-url", unreachable.url)
        took = time.monotonic() - started
        assert code == Exit.UNREACHABLE, out
        assert took < CONNECT_TIMEOUT_S + MARGIN_S, out
        why = [line for line in out.splitlines() if "cannot reach NATS at" in line]
        assert len(why) == 1, out
        assert unreachable.reason in why[0], out
        assert "Traceback" not in out
        assert not [secret for secret in SECRETS if secret in out], out
        if unreachable.url.startswith("nats://alice"):
            assert "nats://***@127.0.0.1:" in why[0]
        print(f"{program}, {unreachable.reason}: exit {code} after {took:.1f} s: {why[0]}")


class TestFirstConnect:
    """``first_connect`` itself, in this process."""

    async def test_gives_up_early_on_a_permanent_error(self, unreachable: Unreachable) -> None:
        """Refused and silent servers are retried until the timeout; a wrong password or an
        untrusted certificate ends it at once. Nothing is left running either way."""
        started = time.monotonic()
        with pytest.raises(ConnectError) as info:
            await first_connect([unreachable.url], timeout=CONNECT_TIMEOUT_S)
        took = time.monotonic() - started
        if unreachable.fast:
            assert took < CONNECT_TIMEOUT_S / 2
        else:
            assert took >= CONNECT_TIMEOUT_S - 0.1
        assert unreachable.reason in str(info.value)
        assert f"{CONNECT_TIMEOUT_S:g} s" in str(info.value)
        assert not [secret for secret in SECRETS if secret in str(info.value)]
        assert asyncio.all_tasks() == {asyncio.current_task()}

    async def test_timeout_as_an_attempt_ends(self) -> None:
        """Attempts 1 s apart, timeout 2 s: the give-up cancel lands as an attempt is refused
        (Python 3.11's wait_for() then drops the cancel: it must be sent again)."""
        url = f"nats://127.0.0.1:{free_port()}"
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(ConnectError, match="connection refused"):
                await first_connect([url], timeout=2, reconnect_time_wait=1)
            assert time.monotonic() - started < 10  # it hung for ever before
        assert asyncio.all_tasks() == {asyncio.current_task()}

    async def test_cancelled_leaves_nothing_running(self, silent_port: int) -> None:
        connecting = asyncio.create_task(
            first_connect([f"nats://127.0.0.1:{silent_port}"], timeout=30)
        )
        await asyncio.sleep(0.5)
        connecting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await connecting
        assert asyncio.all_tasks() == {asyncio.current_task()}

    async def test_reconnects_once_connected(self, tmp_path: Path) -> None:
        """After a first connection, a restarted server is reached again."""
        server = NatsServer(tmp_path / "nats")
        await server.start()
        try:
            nc = await first_connect([server.url], timeout=CONNECT_TIMEOUT_S, name="test")
            try:
                await server.stop()
                await server.start()

                async def reconnected() -> bool | None:
                    return True if nc.is_connected else None

                await eventually(reconnected, timeout=20)
                await nc.flush(timeout=5)
            finally:
                await nc.close()
        finally:
            await server.stop()
