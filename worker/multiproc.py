"""One scrape target for a ``--processes`` group: prometheus-client's multiprocess mode.

With ``RMOS_METRICS_PORT`` set and ``--processes N`` (N > 1), the first process of the group
makes a directory of its own, ``DATA_DIR/metrics/<random>/``, holds an ``flock`` on its
``group.lock`` for as long as it lives, and exports ``PROMETHEUS_MULTIPROC_DIR`` naming it; the
siblings inherit the variable (and no metrics port). Every process of the group then keeps its
counters, histograms and gauges in mmap-ed files there, and the first process's port reads them
all (``MultiProcessCollector``): one target for the whole group. A sibling that exits has its
live gauges removed (``process_dead``); its counters stay, so the group's sums never go back.

Leftovers are swept at start: a group directory whose lock nobody holds belongs to a group that
is gone (several groups, or containers, may share one data dir; each has a directory of its
own). The first process removes its own directory when it stops (:func:`finish`).

The data dir can fill up (the store outage of ``worker.outage``): a write to a page of an mmap-ed
file that the file system has not allocated is a SIGBUS then. So each process allocates its files
whole (``posix_fallocate``) *before* prometheus-client first opens them, large enough never to
grow (see ``FILES``); a process that cannot (no space at start) does not start.

prometheus-client picks its value class when it is imported, from the environment: so
:func:`prepare` runs in the CLI before anything imports it (a program that imported it earlier,
such as a test harness around the CLI, may still run one process, not a group).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Final

from worker.settings import Settings

log = logging.getLogger(__name__)
ENV = "PROMETHEUS_MULTIPROC_DIR"
METRICS_DIR = "metrics"
LOCK = "group.lock"
# prometheus-client's files: one per metric type and process (gauges: per multiprocess mode).
# Every gauge of worker.metrics uses GAUGE_MODE (a test checks it).
GAUGE_MODE: Final = "livemax"
FILES = ("counter", "histogram", f"gauge_{GAUGE_MODE}")
# The samples of one process fill a few tens of KiB (a key of ~200 bytes per sample); a file
# that never grows is never extended into unallocated pages.
FILE_BYTES = 1 << 20
READY_PREFIX = "ready_"

_owned: tuple[int, Path] | None = None  # the first process's lock and its group's directory


class MetricsDirError(Exception):
    """The group's metrics files cannot be made (no space, no permission)."""


def prepare(settings: Settings) -> Path | None:
    """Before prometheus-client is imported: the first process of a group makes and names the
    group's directory; every process of a group allocates its own files there. Returns the
    group's directory, or None outside a group (one process: its own registry)."""
    first = settings.metrics_port is not None and settings.processes > 1
    sibling = settings.metrics_port is None and bool(os.environ.get(ENV))
    if (first or sibling) and "prometheus_client" in sys.modules:  # its mode is chosen already
        raise RuntimeError("prometheus_client imported before worker.multiproc.prepare()")
    if settings.metrics_port is not None:
        if settings.processes > 1:
            os.environ[ENV] = str(_new_group_dir(settings.data_dir / METRICS_DIR))
        else:
            os.environ.pop(ENV, None)  # one process serves its own registry
    path = group_dir()
    if path is not None:
        allocate(path, os.getpid())
    return path


def group_dir() -> Path | None:
    """The group's directory in this process (the first's or a sibling's); None: no group."""
    value = os.environ.get(ENV)
    return Path(value) if value else None


def allocate(path: Path, pid: int) -> None:
    """Allocate this process's files whole, before prometheus-client opens them."""
    for prefix in FILES:
        try:
            fd = os.open(path / f"{prefix}_{pid}.db", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                os.posix_fallocate(fd, 0, FILE_BYTES)
            finally:
                os.close(fd)
        except OSError as exc:
            raise MetricsDirError(f"cannot allocate the metrics files in {path}: {exc}") from exc


def _new_group_dir(root: Path) -> Path:
    """A fresh directory for this group, locked by this process; stale ones swept first."""
    global _owned
    try:
        root.mkdir(parents=True, exist_ok=True)
        sweep(root)
        for _ in range(5):  # another group's sweep may take a directory being made: again
            path = root / uuid.uuid4().hex[:12]
            path.mkdir()
            fd = _try_lock(path / LOCK)
            if fd is not None:
                _owned = fd, path
                return path
    except OSError as exc:
        raise MetricsDirError(f"cannot make a metrics directory in {root}: {exc}") from exc
    raise MetricsDirError(f"cannot lock a metrics directory in {root}")


def _try_lock(lock: Path) -> int | None:
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError:  # its directory was swept meanwhile
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def sweep(root: Path) -> list[Path]:
    """Remove the directories of groups that are gone (their lock is free); returns them."""
    removed = []
    for path in sorted(p for p in root.iterdir() if p.is_dir()):
        fd = _try_lock(path / LOCK)
        if fd is None:
            continue  # a live group's
        try:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        finally:
            os.close(fd)
    if removed:
        log.info("removed %d metrics directories of stopped worker groups", len(removed))
    return removed


def mark_ready(path: Path, pid: int) -> None:
    """A sibling says its start-up is finished (the first process's ``/readyz`` waits for it)."""
    with contextlib.suppress(OSError):
        (path / f"{READY_PREFIX}{pid}").touch()


def is_ready(path: Path, pid: int) -> bool:
    return (path / f"{READY_PREFIX}{pid}").exists()


def process_dead(path: Path, pid: int) -> None:
    """A sibling exited: its live gauges go (its counters and histograms stay in the sums)."""
    from prometheus_client import multiprocess

    with contextlib.suppress(OSError):
        multiprocess.mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]
        (path / f"{READY_PREFIX}{pid}").unlink(missing_ok=True)


def finish() -> None:
    """The first process stops: its group's directory goes (siblings have exited)."""
    global _owned
    if _owned is None:
        return
    fd, path = _owned
    shutil.rmtree(path, ignore_errors=True)
    os.close(fd)
    _owned = None
