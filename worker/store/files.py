"""The file store: run revisions in append-only segments, blobs as files, under one data dir.

Layout::

    segments/<id>.jsonl         every revision's artifact, a line each (``segments``)
    log.sqlite                  the Merkle log (a leaf per revision) and each run's *place*,
                                where its current bytes are (``run_log``)
    history/<xx>/<run_id>.jsonl the changes after creation, one line a revision (``revisions``)
    blobs/<xx>/<sha256>         attachment bytes, named by their SHA-256
    blobs/<xx>/<sha256>.json    the blob's kind, mime, filename and size, written before it
    index.sqlite                the ``list`` index, a projection of the placed runs (``index``)
    tmp/<process>/              temp files and intents of one live process (see ``workspace``)

Runs are created a batch at a time (a group commit): the batch's artifacts appended to this
process's segment in one write and its intent written; one flush; one transaction of
``log.sqlite`` that places and logs each run that has no place yet (create-if-absent, across
processes); one index transaction; one flush for log and index. A run's place is its commit
point: bytes no place names are never read.

``<xx>`` is the two hex digits after "run_". Blobs are files: written as a temp file, flushed,
then ``os.link``-ed to their name (EEXIST: stored already). The data dirs of older versions kept
one file a run (``runs/<xx>/<run_id>.json``): opening one moves those into segments.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from worker.store.revisions import Revisions, created_entry, encode
from worker.store.run_log import RunLog
from worker.store.segments import Place, Segments
from worker.store.workspace import Workspace

log = logging.getLogger(__name__)

_RUN_ID = re.compile(RUN_ID_PATTERN)
_RUN_FILE = re.compile(RUN_ID_PATTERN.strip("^$") + r"\.json")
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
        self.blobs_dir = data_dir / "blobs"
        self.workspace = Workspace(data_dir, use_syncfs=use_syncfs)
        # With syncfs the commit's last flush covers the index's WAL too; else SQLite fsyncs.
        self.index = RunIndex(data_dir / "index.sqlite", flushed_by_caller=self.workspace.batched)
        self._log = RunLog(data_dir / "log.sqlite", flushed_by_caller=self.workspace.batched)
        self.segments = Segments(
            data_dir / "segments", self._log.new_segment, lambda d: self.workspace.flush(dirs=[d])
        )
        self.history_dir = data_dir / "history"
        self.revisions = Revisions(
            self.history_dir, self.workspace, self.index, self._log, self.segments
        )

    @property
    def log(self) -> RunLog:
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
        """Every run with its history, a chunk of places at a time: each chunk is read in a
        thread while the caller takes the one before (the loop stays free). One chunk ahead,
        not more: a reader thread running free raced the caller for the GIL and cost more than
        it gained."""
        ahead = asyncio.ensure_future(asyncio.to_thread(self._read_chunk, ""))
        try:
            while True:
                runs = await ahead
                if not runs:
                    return
                ahead = asyncio.ensure_future(asyncio.to_thread(self._read_chunk, runs[-1].run_id))
                for run in runs:
                    yield run
        finally:
            if not ahead.cancel():
                ahead.exception()  # a read no one waits for may have failed: retrieved

    def _read_chunk(self, after: str, limit: int = 1000) -> list[StoredRun]:
        """The runs after ``after`` with their bytes and history lines. Plain strings and
        system calls: an audit reads millions of runs, and a ``Path`` a file cost four times
        the read itself."""
        placed = self._log.placed_after(after, limit)
        runs = []
        for run_id, data in zip((r for r, _ in placed), self._read_places(placed), strict=True):
            try:
                lines = read_all(f"{self.history_dir}/{run_id[4:6]}/{run_id}.jsonl").splitlines()
            except FileNotFoundError:
                lines = []
            runs.append(StoredRun(run_id, data, [x for x in lines if x]))
        return runs

    def _read_places(self, placed: Sequence[tuple[str, Place]]) -> list[bytes]:
        return self.segments.read_many([place for _, place in placed])

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
        parents = (self.blobs_dir, self.history_dir)
        shards = [parent / s for parent in parents for s in _SHARDS]
        unfinished = self.workspace.open([self.segments.dir, *shards])
        fresh_index = self.index.open()
        self._log.open()
        if "stream_created" in self._log.state():  # a jetstream store's copy of its log
            self._log.clear({})
        if "stream_created" in self.index.state():  # a jetstream store's projection was here
            self.index.clear({})
            fresh_index = True
        self._move_run_files()
        stored = bool(self._log.placed_after("", 1))
        if not stored and (held := sum(p.stat().st_size for p in self.segments.dir.iterdir())):
            log.error(
                "log.sqlite places no run, yet segments/ holds %d bytes: log.sqlite was lost "
                "or replaced, and the runs in those segments are not served",
                held,
            )
        if fresh_index and rebuild_lost_index and stored:
            log.warning("no index (of this version) beside the runs: rebuilding it from them")
            self.reindex()
        elif unfinished:
            found = self._current(unfinished)
            self.index.upsert(found)
            self.revisions.log_current(found)  # an older version's commits: leaves came last
            log.info("indexed %d runs of %d interrupted commits", len(found), len(unfinished))

    def _move_run_files(self, chunk: int = 1000) -> None:
        """Move the runs of an older version's layout (``runs/<xx>/<run_id>.json``) into
        segments. A batch is appended, flushed, placed, flushed, and only then are its files
        removed: a crash part way leaves files that the next start moves again (a run placed
        already keeps its place). Their index rows and leaves are as that layout left them."""
        legacy = self.root / "runs"
        if not legacy.is_dir():
            return
        moved = 0
        for shard in sorted(legacy.iterdir()):
            paths = sorted(p for p in shard.iterdir() if _RUN_FILE.fullmatch(p.name))
            for start in range(0, len(paths), chunk):
                batch = paths[start : start + chunk]
                places = self.segments.append([read_all(str(p)) for p in batch])
                self.workspace.flush(files=[self.segments.path(places[0].segment)])
                self._log.adopt_places(zip((p.stem for p in batch), places, strict=True))
                self.workspace.flush()
                for path in batch:
                    path.unlink(missing_ok=True)
                moved += len(batch)
        for path in [*legacy.iterdir(), legacy]:
            with contextlib.suppress(OSError):  # not empty: files that are not runs stay
                path.rmdir()
        self.workspace.flush(dirs=[self.root])
        if moved:
            log.warning("moved %d runs from runs/ (an older layout) into segments/", moved)

    def _current(self, run_ids: Sequence[str]) -> list[dict[str, Any]]:
        """The current artifacts of those of ``run_ids`` that are stored. Blocking."""
        placed = list(self._log.places_of([r for r in run_ids if _RUN_ID.fullmatch(r)]).items())
        return [json.loads(data) for data in self._read_places(placed)]

    def close(self) -> None:
        self.index.close()
        self._log.close()
        self.segments.close()
        self.workspace.close()

    def run_ids(self) -> Iterator[str]:
        """Every stored run id, in order (a full pass: for tools, never for queries)."""
        after = ""
        while chunk := self._log.placed_after(after, 1000):
            yield from (run_id for run_id, _ in chunk)
            after = chunk[-1][0]

    def blob_hashes(self) -> Iterator[str]:
        """Every stored blob's sha256 (a directory scan, as ``run_ids``)."""
        for shard in _SHARDS:
            with os.scandir(self.blobs_dir / shard) as entries:
                yield from (e.name for e in entries if _SHA256.fullmatch(e.name))

    def count_runs(self) -> int:
        """How many runs are stored (for tools, never for queries)."""
        return self._log.count_placed()

    def reindex(self, progress: Callable[[int], None] | None = None, chunk: int = 1000) -> int:
        """Rebuild the index from every artifact (the one full scan). Blocking; returns runs."""
        self.index.clear()
        done, after = 0, ""
        while placed := self._log.placed_after(after, chunk):
            self.index.upsert(json.loads(data) for data in self._read_places(placed))
            done += len(placed)
            after = placed[-1][0]
            if progress is not None:
                progress(done)
        return done

    async def list_runs(self, query: Query) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.index.query, query)

    def stored_bytes(self, run_id: str) -> bytes | None:
        """A run's current bytes as stored (blocking), or None when it is absent."""
        place = self._log.place_of(run_id)
        return None if place is None else self.segments.read(place)

    def blob_path(self, sha256: str) -> Path:
        """The file of a blob; refuses anything that is not a SHA-256."""
        if not _SHA256.fullmatch(sha256):
            raise ValueError(f"not a sha256: {sha256!r}")
        return self.blobs_dir / sha256[:2] / sha256

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        """On the loop when the place and the bytes are in the caches (see ``cached_read``),
        else in one trip to a thread."""
        try:
            place = self._log.place_on_loop(run_id)
            data = None if place is None else self.segments.read_cached(place)
            if place is not None and data is None:
                data = await asyncio.to_thread(self.segments.read, place)
        except (OSError, sqlite3.Error) as exc:
            raise _failed("read", exc) from exc
        return None if data is None else orjson.loads(data)

    async def verify_run(self, run_id: str) -> list[Check] | None:
        """The integrity checks of a run, from the bytes on disk now; None when absent."""
        return await asyncio.to_thread(self._verify, run_id)

    def _verify(self, run_id: str) -> list[Check] | None:
        data = self.stored_bytes(run_id)
        if data is None:
            return None
        artifact = parse_stored(data)
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
        now, update = utc_now(), self.revisions.update
        try:
            return await asyncio.to_thread(
                update, run_id, decide, expected=expected_revision, now=now
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
        """Group commit: append, flush, place and log, index, flush. Runs in a worker thread."""
        # Runs placed already (a redelivery, mostly) are not written again.
        placed = self._log.places_of([run.run_id for run in runs])
        new = [run for run in runs if run.run_id not in placed]
        # The intent goes with the scratch only once log and index are durable, or after a
        # failure (the unacked batch is retried and repairs the index); a crash leaves it.
        with self.workspace.scratch() as scratch:
            if new:
                intent = scratch.intent(run.run_id for run in new)
                encoded = [run.encoded() for run in new]
                places = self.segments.append(encoded)
                self.workspace.flush(files=[intent, self.segments.path(places[0].segment)])
                records = [
                    leaf_record(run.artifact, created_entry(run.artifact), artifact_bytes=data)
                    for run, data in zip(new, encoded, strict=True)
                ]
                lost = self._log.create(records, places)  # another process placed these first
                placed.update({r.run_id: p for r, p in zip(new, lost, strict=True) if p})
            stored = self._read_places(list(placed.items()))
            existing = dict(zip(placed, map(json.loads, stored), strict=True))
            results = [
                Created(False, existing[run.run_id])
                if run.run_id in existing
                else Created(True, run.artifact)
                for run in runs
            ]
            # Runs that existed are indexed again from their bytes: a commit that placed them
            # and failed before its index transaction is repaired by the redelivery.
            self.index.upsert(result.stored for result in results)
            # One flush for the log and the index together (see ``RunIndex``).
            self.workspace.flush()
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


def _link(temp: Path, final: Path) -> bool:
    """Put a flushed temp file in place unless the name exists; True when this call did."""
    try:
        os.link(temp, final)
    except FileExistsError:
        return False
    return True
