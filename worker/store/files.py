"""The file store: one JSON file per run, content-addressed blobs, group-committed creation.

Layout under the data dir::

    runs/<xx>/<run_id>.json     one artifact per run; <xx> = the two hex digits after "run_"
    blobs/<xx>/<sha256>         attachment bytes, named by their SHA-256
    blobs/<xx>/<sha256>.json    the blob's kind, mime, filename and size
    tmp/<process>/              temp files of one live process, swept when its owner is gone

A run is created by writing a temp file, flushing, then ``os.link``-ing it to its final name:
the link fails with EEXIST when the run exists (create-if-absent across processes), and a reader
never sees a partial file. Temp files live in ``tmp/`` on the same file system so that leftovers
are found without listing the run shards.
"""

from __future__ import annotations

import asyncio
import fcntl
import itertools
import json
import os
import re
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiofiles

from contracts.models import RUN_ID_PATTERN, SHA256_PATTERN
from worker.errors import TransientError
from worker.store.base import NewRun
from worker.store.durable import Flusher

_RUN_ID = re.compile(RUN_ID_PATTERN)
_SHA256 = re.compile(SHA256_PATTERN)
_SHARDS = [f"{i:02x}" for i in range(256)]


def encode(document: dict[str, Any]) -> bytes:
    """The bytes an artifact is stored as: compact JSON, sorted keys, UTF-8."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class FileStore:
    """Artifacts and blobs under one data directory (see the module docstring for the layout)."""

    def __init__(self, data_dir: Path, *, use_syncfs: bool = True) -> None:
        self.root = data_dir
        self.runs_dir = data_dir / "runs"
        self.blobs_dir = data_dir / "blobs"
        self._tmp_root = data_dir / "tmp"
        self._use_syncfs = use_syncfs
        self._tmp_dir: Path | None = None
        self._lock_fd: int | None = None
        self._flusher: Flusher | None = None
        self._names = itertools.count()

    async def open(self) -> None:
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        for parent in (self.runs_dir, self.blobs_dir):
            for shard in _SHARDS:
                (parent / shard).mkdir(parents=True, exist_ok=True)
        self._tmp_root.mkdir(parents=True, exist_ok=True)
        self.sweep_leftovers()
        self._tmp_dir = self._tmp_root / uuid.uuid4().hex
        self._tmp_dir.mkdir()
        self._lock_fd = os.open(self._tmp_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        self._flusher = Flusher(self.root, use_syncfs=self._use_syncfs)
        self._flusher.flush(dirs=[self.root, self.runs_dir, self.blobs_dir, self._tmp_root])

    def sweep_leftovers(self) -> list[Path]:
        """Remove the temp dirs of processes that are gone (their lock is free); return them."""
        removed = []
        for child in sorted(self._tmp_root.iterdir()):
            if child == self._tmp_dir:
                continue
            lock_path = child / ".lock"
            try:
                fd = os.open(lock_path, os.O_RDWR)
            except FileNotFoundError:
                fd = None
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live process owns it
                finally:
                    os.close(fd)
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
        return removed

    def close(self) -> None:
        if self._flusher is not None:
            self._flusher.close()
            self._flusher = None
        if self._tmp_dir is not None:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
            self._tmp_dir = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def run_path(self, run_id: str) -> Path:
        """The file of a run; refuses anything that is not a valid run id."""
        if not _RUN_ID.fullmatch(run_id):
            raise ValueError(f"not a run id: {run_id!r}")
        return self.runs_dir / run_id[4:6] / f"{run_id}.json"

    def blob_path(self, sha256: str) -> Path:
        if not _SHA256.fullmatch(sha256):
            raise ValueError(f"not a sha256: {sha256!r}")
        return self.blobs_dir / sha256[:2] / sha256

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        try:
            async with aiofiles.open(self.run_path(run_id), "rb") as fh:
                data = await fh.read()
        except FileNotFoundError:
            return None
        document: dict[str, Any] = json.loads(data)
        return document

    async def create_runs(self, runs: Sequence[NewRun]) -> list[bool]:
        if not runs:
            return []
        payloads = [(run.run_id, encode(run.artifact)) for run in runs]
        try:
            return await asyncio.to_thread(self._commit_creates, payloads)
        except OSError as exc:
            raise TransientError(f"group commit failed: {exc}") from exc

    def _temp_name(self, stem: str) -> Path:
        assert self._tmp_dir is not None, "open() the store first"
        return self._tmp_dir / f"{stem}.{next(self._names)}.tmp"

    def _write_temp(self, stem: str, data: bytes) -> Path:
        path = self._temp_name(stem)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        return path

    def _commit_creates(self, payloads: list[tuple[str, bytes]]) -> list[bool]:
        """Group commit: write all, flush once, link all, flush once. Runs in a worker thread."""
        assert self._flusher is not None
        temps = [self._write_temp(run_id, data) for run_id, data in payloads]
        try:
            self._flusher.flush(files=temps)
            created, finals = [], []
            for (run_id, _), temp in zip(payloads, temps, strict=True):
                final = self.run_path(run_id)
                try:
                    os.link(temp, final)
                except FileExistsError:
                    created.append(False)
                else:
                    created.append(True)
                    finals.append(final.parent)
            self._flusher.flush(dirs=set(finals))
        finally:
            for temp in temps:
                temp.unlink(missing_ok=True)
        return created

    async def blob_size(self, sha256: str) -> int | None:
        try:
            return (await asyncio.to_thread(self.blob_path(sha256).stat)).st_size
        except FileNotFoundError:
            return None
