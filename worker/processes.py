"""Child processes: the helper that ties a child's life to ours, and sibling worker processes.

A worker process runs on one core at a time (CPython's GIL): validation, hashing and the group
commit share it. Workers are built to run side by side on one data dir and one durable consumer
(create-if-absent in one ``log.sqlite`` transaction, a segment and a temp dir per process,
compare-and-swap updates under ``flock``, SQLite in WAL mode), so ``rmos-runs worker --processes
N`` starts N-1 more workers beside itself, on the same NATS URL and data dir, and the batches
spread over N cores. They connect as the first does: the URL and every connection setting (user,
password, token, nkey seed, creds, TLS files) go to them in their environment, never on a
command line (which any user of the host can read).

The group lives and stops as one: a SIGTERM to the first process stops the others; when one of
them exits on its own, the others are stopped and the first exits 1, for the service manager to
restart the whole group (a restart redelivers whatever was not acked).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import signal
import sys
from collections.abc import Callable

from pydantic import SecretStr

from worker import multiproc
from worker.settings import CONNECTION_SETTINGS, Settings

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1
_KILL_AFTER_S = 5.0  # beyond the siblings' own graceful timeout


def die_with_parent() -> None:
    """In a child (``preexec_fn``): SIGTERM when the parent dies, so no child is orphaned."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the parent still stops it on exit
        pass


def connection_env(settings: Settings, nats_url: str) -> dict[str, str]:
    """This process's environment with ``RMOS_NATS_URL`` and the connection settings set as in
    ``settings`` (and unset where unset there): a child connects as this process does."""
    env = {**os.environ, "RMOS_NATS_URL": nats_url}
    for name in CONNECTION_SETTINGS:
        value = getattr(settings, name)
        variable = f"RMOS_{name.upper()}"
        if value is None:
            env.pop(variable, None)
        else:
            env[variable] = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
    return env


class Siblings:
    """The other worker processes of a group, started and stopped by its first process."""

    def __init__(self, settings: Settings, nats_url: str, count: int) -> None:
        self._settings = settings
        self._url = nats_url
        self._count = count
        self._procs: list[asyncio.subprocess.Process] = []
        self._watchers: list[asyncio.Task[None]] = []
        self._stopping = False
        self.failed = False

    async def start(self, on_exit: Callable[[], None]) -> None:
        """Start them; ``on_exit`` is called when one exits before :meth:`terminate`."""
        if not self._count:
            return
        command = [
            sys.executable, "-m", "worker.cli", "worker",
            "--data-dir", str(self._settings.data_dir), "--store", self._settings.store,
            *(["--verbose"] if logging.getLogger().isEnabledFor(logging.DEBUG) else []),
        ]  # fmt: skip
        for _ in range(self._count):
            env = {**connection_env(self._settings, self._url), "RMOS_PROCESSES": "1"}
            # No port of their own: with a metrics port, the group is in multiprocess mode
            # (PROMETHEUS_MULTIPROC_DIR, inherited) and the first process serves it all.
            env.pop("RMOS_METRICS_PORT", None)
            proc = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # Ctrl-C reaches the first process only; it stops them
                preexec_fn=die_with_parent,
            )
            self._procs.append(proc)
            self._watchers.append(asyncio.create_task(self._watch(proc, on_exit)))
        log.info("started %d more worker processes: %s", self._count, [p.pid for p in self._procs])

    def pids(self) -> list[int]:
        """The siblings started, in order (the ``process`` label 1, 2, ... of ``process_*``)."""
        return [proc.pid for proc in self._procs]

    async def _watch(self, proc: asyncio.subprocess.Process, on_exit: Callable[[], None]) -> None:
        code = await proc.wait()
        group = multiproc.group_dir()
        if group is not None:
            multiproc.process_dead(group, proc.pid)
        if not self._stopping:
            log.error("worker process %d exited with %s; stopping the group", proc.pid, code)
            self.failed = True
            on_exit()

    def terminate(self) -> None:
        """Ask every running sibling to stop (SIGTERM, once: a second one would kill it in its
        own clean-up); returns at once."""
        if self._stopping:
            return
        self._stopping = True
        for proc in self._procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)

    async def wait(self) -> int:
        """Stop them (SIGKILL after their graceful timeout); 0 when all stopped cleanly."""
        self.terminate()
        timeout = self._settings.graceful_timeout_s + _KILL_AFTER_S
        if self._watchers:
            await asyncio.wait(self._watchers, timeout=timeout)
        for proc in self._procs:
            if proc.returncode is None:
                log.warning("worker process %d ignored SIGTERM; killed", proc.pid)
                proc.kill()
                await proc.wait()
        # One that had no handler yet (still starting) dies of the SIGTERM: stopped all the same.
        clean = all(proc.returncode in (0, -signal.SIGTERM) for proc in self._procs)
        return 0 if clean and not self.failed else 1
