"""The file store: one JSON file per run and content-addressed blobs, under one data dir.

Layout::

    runs/<xx>/<run_id>.json     one artifact per run; <xx> = the two hex digits after "run_"
    blobs/<xx>/<sha256>         attachment bytes, named by their SHA-256
    blobs/<xx>/<sha256>.json    the blob's kind, mime, filename and size, written before it
    history/<xx>/<run_id>.jsonl the changes after creation, one line a revision (``revisions``)
    index.sqlite                the ``list`` index, a projection of runs/ (see ``index``)
    log.sqlite                  the Merkle log: a leaf per revision, subtree hashes (``merkle_log``)
    tmp/<process>/              temp files and intents of one live process (see ``workspace``)

A file is created by writing a temp file, flushing, then ``os.link``-ing it to its final name:
the link fails with EEXIST when the name exists (create-if-absent across processes), and a
reader never sees a partial file. Runs are created a batch at a time: one flush for the temp
files and the batch's intent, links, one index transaction, one log transaction (the leaves of
the batch), one flush for links, index and log.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import re
import sqlite3
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

from contracts.canonical import sha256_file, sha256_hex
from contracts.models import RUN_ID_PATTERN, SHA256_PATTERN
from contracts.transparency import leaf_record
from worker.core.timefmt import utc_now
from worker.core.verify import Check, attachment_hashes, parse_stored, verify_artifact
from worker.errors import StoreOutageError, TransientError
from worker.store.base import BlobInfo, Created, Decide, Leaf, NewRun, Query, StoredRun
from worker.store.cached_read import read_all, read_file
from worker.store.index import RunIndex
from worker.store.merkle_log import MerkleLog
from worker.store.revisions import Revisions, created_entry, encode
from worker.store.workspace import Workspace

log = logging.getLogger(__name__)

_RUN_ID = re.compile(RUN_ID_PATTERN)
_SHA256 = re.compile(SHA256_PATTERN)
_SHARDS = [f"{i:02x}" for i in range(256)]


async def _read(path: Path) -> bytes | None:
    """A file's bytes: on the loop when the kernel's caches hold it, else in one trip to a
    thread (``cached_read``); None when it is absent."""
    try:
        return await read_file(str(path))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _failed("read", exc) from exc


class FileStore:
    """Runs and blobs under one data directory (see the module docstring for the layout)."""

    def __init__(self, data_dir: Path, *, use_syncfs: bool = True) -> None:
        self.root = data_dir
        self.runs_dir = data_dir / "runs"
        self.blobs_dir = data_dir / "blobs"
        self.workspace = Workspace(data_dir, use_syncfs=use_syncfs)
        # With syncfs the commit's last flush covers the index's WAL too; else SQLite fsyncs.
        self.index = RunIndex(data_dir / "index.sqlite", flushed_by_caller=self.workspace.batched)
        self._log = MerkleLog(data_dir / "log.sqlite", flushed_by_caller=self.workspace.batched)
        self.history_dir = data_dir / "history"
        self.revisions = Revisions(self.history_dir, self.workspace, self.index, self._log)

    @property
    def log(self) -> MerkleLog:
        return self._log

    async def log_reaches(self, size: int, timeout: float) -> bool:
        return await asyncio.to_thread(self._log.size) >= size

    async def logged(self, run_id: str) -> list[Leaf]:
        return await asyncio.to_thread(self._log.leaves_of, run_id)

    async def log_size(self) -> int:
        return await asyncio.to_thread(self._log.size)

    async def catch_up_log(self) -> int:
        return await self.log_size()

    async def stored_runs(self) -> AsyncGenerator[StoredRun, None]:
        """Every run with its history, a shard at a time: each shard is read in a thread while
        the caller takes the one before (the loop stays free). One shard ahead, not more: a
        reader thread running free raced the caller for the GIL and cost more than it gained.
        Plain strings and system calls: an audit reads millions of files, and a ``Path`` a
        file cost four times the read itself."""
        ahead = asyncio.ensure_future(asyncio.to_thread(self._read_shard, _SHARDS[0]))
        try:
            for after in [*_SHARDS[1:], None]:
                runs = await ahead
                if after is not None:
                    ahead = asyncio.ensure_future(asyncio.to_thread(self._read_shard, after))
                for run in runs:
                    yield run
        finally:
            if not ahead.cancel():
                ahead.exception()  # a read no one waits for may have failed: retrieved

    def _read_shard(self, shard: str) -> list[StoredRun]:
        history_dir = f"{self.history_dir}/{shard}"
        with os.scandir(history_dir) as entries:
            histories = {e.name[:-6] for e in entries if e.name.endswith(".jsonl")}
        runs = []
        with os.scandir(self.runs_dir / shard) as entries:
            for entry in entries:
                if not entry.name.endswith(".json"):
                    continue
                run_id = entry.name[:-5]
                try:
                    data = read_all(entry.path)
                    lines = []
                    if run_id in histories:
                        lines = read_all(f"{history_dir}/{run_id}.jsonl").splitlines()
                except FileNotFoundError:  # removed since the scan: the audit names it gone
                    continue
                runs.append(StoredRun(run_id, data, [x for x in lines if x]))
        return runs

    async def adopt_unlogged(self) -> int:
        """Log the runs stored before the log existed, as they stand now (an upgrade); returns
        how many."""
        adopted = 0
        batch: list[StoredRun] = []
        async for run in self.stored_runs():
            batch.append(run)
            if len(batch) == 1000:
                adopted += await asyncio.to_thread(self._adopt, batch)
                batch = []
        return adopted + await asyncio.to_thread(self._adopt, batch)

    def _adopt(self, batch: list[StoredRun]) -> int:
        logged = self._log.logged_of([run.run_id for run in batch])
        records = []
        for run in batch:
            if logged[run.run_id]:
                continue
            artifact = json.loads(run.artifact)
            entries = self.revisions.history(artifact)
            entry = next(e for e in entries if e["revision"] == artifact["revision"])
            adopted = artifact["revision"] > 1  # revision 1 is logged whole, as at creation
            records.append(leaf_record(artifact, entry, adopted=adopted))
        self._log.append(records)
        return len(records)

    async def open(self, *, rebuild_lost_index: bool = True) -> None:
        """Create the layout, sweep leftovers, repair the index; before the first message."""
        await asyncio.to_thread(self._open, rebuild_lost_index)

    def _open(self, rebuild_lost_index: bool) -> None:
        parents = (self.runs_dir, self.blobs_dir, self.history_dir)
        shards = [parent / s for parent in parents for s in _SHARDS]
        unfinished = self.workspace.open(shards)
        fresh_index = self.index.open()
        self._log.open()
        if "stream_created" in self._log.state():  # a jetstream store's copy of its log
            self._log.clear({})
        if "stream_created" in self.index.state():  # a jetstream store's projection was here
            self.index.clear({})
            fresh_index = True
        if fresh_index and rebuild_lost_index and any(self._run_paths()):
            log.warning("no index (of this version) beside the runs: rebuilding it from them")
            self.reindex()
        elif unfinished:
            found = [_load(p) for p in map(self.run_path, unfinished) if p.exists()]
            self.index.upsert(found)
            self.revisions.log_current(found)
            log.info("indexed %d runs of %d interrupted commits", len(found), len(unfinished))

    def close(self) -> None:
        self.index.close()
        self._log.close()
        self.workspace.close()

    def _run_paths(self) -> Iterator[Path]:
        for shard in _SHARDS:
            with os.scandir(self.runs_dir / shard) as entries:
                for entry in entries:
                    if entry.name.endswith(".json"):
                        yield Path(entry.path)

    def run_ids(self) -> Iterator[str]:
        """Every stored run id (a directory scan: for tools, never for queries)."""
        return (path.stem for path in self._run_paths())

    def blob_hashes(self) -> Iterator[str]:
        """Every stored blob's sha256 (a directory scan, as ``run_ids``)."""
        for shard in _SHARDS:
            with os.scandir(self.blobs_dir / shard) as entries:
                yield from (e.name for e in entries if _SHA256.fullmatch(e.name))

    def count_runs(self) -> int:
        """How many artifacts are on disk (a directory scan: for tools, never for queries)."""
        return sum(1 for _ in self._run_paths())

    def reindex(self, progress: Callable[[int], None] | None = None, chunk: int = 1000) -> int:
        """Rebuild the index from every artifact (the one full scan). Blocking; returns runs."""
        self.index.clear()
        done = 0
        batch: list[dict[str, Any]] = []
        for path in self._run_paths():
            batch.append(_load(path))
            if len(batch) == chunk:
                self.index.upsert(batch)
                done += len(batch)
                batch.clear()
                if progress is not None:
                    progress(done)
        self.index.upsert(batch)
        return done + len(batch)

    async def list_runs(self, query: Query) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.index.query, query)

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
        return None if data is None else orjson.loads(data)

    async def verify_run(self, run_id: str) -> list[Check] | None:
        """The integrity checks of a run, from the bytes on disk now; None when absent."""
        return await asyncio.to_thread(self._verify, run_id)

    def _verify(self, run_id: str) -> list[Check] | None:
        try:
            artifact = parse_stored(self.run_path(run_id).read_bytes())
        except FileNotFoundError:
            return None
        if isinstance(artifact, Check):
            return [artifact]
        blobs = {sha: self._blob_facts(sha) for sha in attachment_hashes(artifact)}
        return verify_artifact(artifact, blobs, run_id=run_id)

    def _blob_facts(self, sha256: str) -> tuple[str, int] | None:
        path = self.blob_path(sha256)
        try:
            return sha256_file(path), path.stat().st_size
        except FileNotFoundError:
            return None

    async def update_run(
        self, run_id: str, decide: Decide, *, expected_revision: int | None = None
    ) -> tuple[dict[str, Any], bool] | None:
        """Compare-and-swap a change of a run (see ``revisions``); None when it is absent."""
        path, now = self.run_path(run_id), utc_now()
        update = self.revisions.update
        try:
            return await asyncio.to_thread(
                update, path, decide, expected=expected_revision, now=now
            )
        except (OSError, sqlite3.Error) as exc:
            raise _failed(f"update of {run_id}", exc) from exc

    async def history(self, run_id: str) -> list[dict[str, Any]] | None:
        """Every revision of a run, oldest first; None when it is absent."""
        artifact = await self.get_run(run_id)
        if artifact is None:
            return None
        return await asyncio.to_thread(self.revisions.history, artifact)

    async def create_runs(self, runs: Sequence[NewRun]) -> list[Created]:
        if not runs:
            return []
        try:
            return await asyncio.to_thread(self._commit, runs)
        except (OSError, sqlite3.Error) as exc:
            raise _failed("group commit", exc) from exc

    def _commit(self, runs: Sequence[NewRun]) -> list[Created]:
        """Group commit: write all, flush, link all, index, flush. Runs in a worker thread."""
        finals = [self.run_path(run.run_id) for run in runs]
        # The intent goes with the scratch only once links and index are durable, or after a
        # failure (the unacked batch is retried and repairs the index); a crash leaves it.
        with self.workspace.scratch() as scratch:
            intent = scratch.intent(run.run_id for run in runs)
            encoded = [encode(run.artifact) for run in runs]
            temps = [
                scratch.temp(run.run_id, data) for run, data in zip(runs, encoded, strict=True)
            ]
            self.workspace.flush(files=[intent, *temps])
            results = [
                Created(True, run.artifact) if _link(temp, final) else Created(False, _load(final))
                for run, temp, final in zip(runs, temps, finals, strict=True)
            ]
            # Runs that existed are indexed again from their file: a commit that linked them
            # and failed before its index transaction is repaired by the redelivery.
            self.index.upsert(result.stored for result in results)
            # Leaves likewise: a run that exists from a crashed commit gets its leaf now.
            self._log.append(
                [
                    leaf_record(
                        r.stored,
                        created_entry(r.stored),
                        artifact_bytes=data if r.created else None,
                    )
                    for r, data in zip(results, encoded, strict=True)
                    if r.stored.get("revision") == 1
                ]
            )
            # One flush for the links, the index and the log together (see ``RunIndex``).
            self.workspace.flush(dirs={final.parent for final in finals})
        return results

    async def blob_size(self, sha256: str) -> int | None:
        try:
            return (await asyncio.to_thread(self.blob_path(sha256).stat)).st_size
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _failed("blob look-up", exc) from exc

    async def put_blob(self, data: bytes, *, kind: str, mime: str, filename: str) -> BlobInfo:
        """Store bytes under their SHA-256, once: the same bytes again keep the first metadata."""
        info = BlobInfo(sha256_hex(data), len(data), kind, mime, filename)
        try:
            await asyncio.to_thread(self._put_blob, info, data)
        except OSError as exc:
            raise _failed("blob write", exc) from exc
        return await self.get_blob_info(info.sha256) or info

    def _put_blob(self, info: BlobInfo, data: bytes) -> None:
        path = self.blob_path(info.sha256)
        if path.exists():
            return
        with self.workspace.scratch() as scratch:
            meta = scratch.temp(path.name, encode(asdict(info)))
            blob = scratch.temp(path.name, data)
            self.workspace.flush(files=[meta, blob])
            _link(meta, path.with_suffix(".json"))  # metadata first: a blob never lacks it
            _link(blob, path)
            self.workspace.flush(dirs=[path.parent])

    async def get_blob_info(self, sha256: str) -> BlobInfo | None:
        meta = await _read(self.blob_path(sha256).with_suffix(".json"))
        if meta is None or await self.blob_size(sha256) is None:
            return None
        return BlobInfo(**json.loads(meta))

    async def get_blob(self, sha256: str) -> tuple[bytes, BlobInfo] | None:
        info = await self.get_blob_info(sha256)
        data = await _read(self.blob_path(sha256)) if info is not None else None
        return None if data is None or info is None else (data, info)


# OS errors that say the file system fails as a whole, whichever run is written: an outage.
# Others (a shard that is not a directory, say) concern some run ids only and are retried with
# the message, so that one damaged corner cannot stall every event.
_STORE_DOWN_ERRNOS = frozenset(
    {
        errno.ENOSPC,  # no space
        errno.EDQUOT,  # over quota
        errno.EIO,  # I/O error (a failing disk, a lost network mount)
        errno.EROFS,  # remounted read-only after errors
        errno.EACCES,  # permissions of the data dir changed
        errno.EPERM,
        errno.ENOMEM,
        errno.EMFILE,  # out of file descriptors
        errno.ENFILE,
        errno.ESTALE,  # a network file system's handle gone
        errno.ENOTCONN,
    }
)


def _failed(what: str, exc: OSError | sqlite3.Error) -> TransientError:
    """The error a failed file or index operation becomes: a ``StoreOutageError`` (ingest
    pauses until the store works again) when the file system or the index fails as a whole,
    else a ``TransientError`` retried with the message."""
    if isinstance(exc, OSError):
        reason = exc.strerror or repr(exc)
        if exc.errno in _STORE_DOWN_ERRNOS:
            return StoreOutageError(f"{what} failed: {reason}")
        return TransientError(f"{what} failed: {reason}")
    if isinstance(exc, sqlite3.OperationalError):  # full, I/O, read-only, locked: the index's
        return StoreOutageError(f"{what} failed: index: {exc}")
    return TransientError(f"{what} failed: index: {exc!r}")


def _load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_bytes())
    return document


def _link(temp: Path, final: Path) -> bool:
    """Put a flushed temp file in place unless the name exists; True when this call did."""
    try:
        os.link(temp, final)
    except FileExistsError:
        return False
    return True
