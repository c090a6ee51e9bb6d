"""The file store: one JSON file per run and content-addressed blobs, under one data dir.

Layout::

    runs/<xx>/<run_id>.json     one artifact per run; <xx> = the two hex digits after "run_"
    blobs/<xx>/<sha256>         attachment bytes, named by their SHA-256
    blobs/<xx>/<sha256>.json    the blob's kind, mime, filename and size, written before it
    tmp/<process>/              temp files of one live process (see ``workspace``)

A file is created by writing a temp file, flushing, then ``os.link``-ing it to its final name:
the link fails with EEXIST when the name exists (create-if-absent across processes), and a
reader never sees a partial file. Runs are created a batch at a time with two flushes in all.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiofiles

from contracts.canonical import sha256_hex
from contracts.models import RUN_ID_PATTERN, SHA256_PATTERN
from worker.errors import TransientError
from worker.store.base import BlobInfo, NewRun
from worker.store.workspace import Workspace

_RUN_ID = re.compile(RUN_ID_PATTERN)
_SHA256 = re.compile(SHA256_PATTERN)
_SHARDS = [f"{i:02x}" for i in range(256)]


def encode(document: dict[str, Any]) -> bytes:
    """The bytes a document is stored as: compact JSON, sorted keys, UTF-8."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


async def _read(path: Path) -> bytes | None:
    try:
        async with aiofiles.open(path, "rb") as fh:
            return await fh.read()
    except FileNotFoundError:
        return None


class FileStore:
    """Runs and blobs under one data directory (see the module docstring for the layout)."""

    def __init__(self, data_dir: Path, *, use_syncfs: bool = True) -> None:
        self.root = data_dir
        self.runs_dir = data_dir / "runs"
        self.blobs_dir = data_dir / "blobs"
        self.workspace = Workspace(data_dir, use_syncfs=use_syncfs)

    async def open(self) -> None:
        shards = [parent / s for parent in (self.runs_dir, self.blobs_dir) for s in _SHARDS]
        await asyncio.to_thread(self.workspace.open, shards)

    def close(self) -> None:
        self.workspace.close()

    def run_path(self, run_id: str) -> Path:
        """The file of a run; refuses anything that is not a valid run id."""
        if not _RUN_ID.fullmatch(run_id):
            raise ValueError(f"not a run id: {run_id!r}")
        return self.runs_dir / run_id[4:6] / f"{run_id}.json"

    def blob_path(self, sha256: str) -> Path:
        """The file of a blob; refuses anything that is not a SHA-256."""
        if not _SHA256.fullmatch(sha256):
            raise ValueError(f"not a sha256: {sha256!r}")
        return self.blobs_dir / sha256[:2] / sha256

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        data = await _read(self.run_path(run_id))
        return None if data is None else json.loads(data)

    async def create_runs(self, runs: Sequence[NewRun]) -> list[bool]:
        if not runs:
            return []
        payloads = [(self.run_path(run.run_id), encode(run.artifact)) for run in runs]
        try:
            return await asyncio.to_thread(self._link_all, payloads)
        except OSError as exc:
            raise TransientError(f"group commit failed: {exc}") from exc

    def _link_all(self, payloads: list[tuple[Path, bytes]]) -> list[bool]:
        """Group commit: write all, flush once, link all, flush once. Runs in a worker thread."""
        temps = [self.workspace.write_temp(final.stem, data) for final, data in payloads]
        try:
            self.workspace.flush(files=temps)
            created = [_link(temp, final) for temp, (final, _) in zip(temps, payloads, strict=True)]
            self.workspace.flush(dirs={final.parent for final, _ in payloads})
        finally:
            for temp in temps:
                temp.unlink(missing_ok=True)
        return created

    async def blob_size(self, sha256: str) -> int | None:
        try:
            return (await asyncio.to_thread(self.blob_path(sha256).stat)).st_size
        except FileNotFoundError:
            return None

    async def put_blob(self, data: bytes, *, kind: str, mime: str, filename: str) -> BlobInfo:
        """Store bytes under their SHA-256, once: the same bytes again keep the first metadata."""
        info = BlobInfo(sha256_hex(data), len(data), kind, mime, filename)
        try:
            await asyncio.to_thread(self._put_blob, info, data)
        except OSError as exc:
            raise TransientError(f"blob not stored: {exc}") from exc
        return await self.get_blob_info(info.sha256) or info

    def _put_blob(self, info: BlobInfo, data: bytes) -> None:
        path = self.blob_path(info.sha256)
        if path.exists():
            return
        meta = self.workspace.write_temp(path.name, encode(asdict(info)))
        blob = self.workspace.write_temp(path.name, data)
        try:
            self.workspace.flush(files=[meta, blob])
            _link(meta, path.with_suffix(".json"))  # metadata first: a blob never lacks it
            _link(blob, path)
            self.workspace.flush(dirs=[path.parent])
        finally:
            meta.unlink(missing_ok=True)
            blob.unlink(missing_ok=True)

    async def get_blob_info(self, sha256: str) -> BlobInfo | None:
        meta = await _read(self.blob_path(sha256).with_suffix(".json"))
        if meta is None or await self.blob_size(sha256) is None:
            return None
        return BlobInfo(**json.loads(meta))

    async def get_blob(self, sha256: str) -> tuple[bytes, BlobInfo] | None:
        info = await self.get_blob_info(sha256)
        data = await _read(self.blob_path(sha256)) if info is not None else None
        return None if data is None or info is None else (data, info)


def _link(temp: Path, final: Path) -> bool:
    """Put a flushed temp file in place unless the name exists; True when this call did."""
    try:
        os.link(temp, final)
    except FileExistsError:
        return False
    return True
