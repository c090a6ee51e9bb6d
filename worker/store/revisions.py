"""Changes after creation: compare-and-swap on ``revision``, an append-only history.

Only ``meta``, ``advisory_inputs`` and the ``explanation_*`` fields ever change (the caller's
``change`` function decides what; the immutable core is checked here). One change is:

    lock the run's shard (flock: safe across processes, not only across tasks)
    read the current artifact (at the run's place); refuse a stale ``expected_revision``
    log the current revision if it has no leaf yet (a run of an older version's layout)
    append the history entry of the new revision, append the new artifact to this process's
    segment, write an intent; one flush
    move the run's place to the new bytes with the new revision's leaf (one transaction of
    ``log.sqlite``), refresh the index; one flush
    unlock

The transaction is the change's commit point. A crash before it leaves bytes no place names
(never read) and maybe a history line for a revision the artifact never reached: readers keep
only entries up to the artifact's revision, the last one written for each, so a retried change
overwrites it. A line torn by a crash is skipped, and the next append ends it first; a failed
append is cut off again. A crash after it leaves the intent: start-up refreshes the index. A
failed change leaves no temp file or intent behind (``Workspace.scratch``).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from contracts.canonical import canonical
from contracts.models import RUN_ID_PATTERN
from contracts.transparency import leaf_record
from worker.core.ingest import content_sha256
from worker.core.timefmt import utc_text
from worker.errors import RevisionConflictError
from worker.store.base import Change, Decide
from worker.store.index import RunIndex
from worker.store.run_log import RunLog
from worker.store.segments import Segments
from worker.store.workspace import Workspace

_RUN_ID = re.compile(RUN_ID_PATTERN)


def encode(document: dict[str, Any]) -> bytes:
    """The bytes a document is stored as: its canonical JSON (CONTRACT section 1), so that the
    SHA-256 of the stored bytes is the document's ``sha256`` (the Merkle log's leaves)."""
    return canonical(document)


class Revisions:
    """Updates and history of the runs under one data dir."""

    def __init__(
        self,
        history_dir: Path,
        workspace: Workspace,
        index: RunIndex,
        run_log: RunLog,
        segments: Segments,
    ) -> None:
        self.history_dir = history_dir
        self._workspace = workspace
        self._index = index
        self._log = run_log
        self._segments = segments

    def history_path(self, run_id: str) -> Path:
        """The history file of a run; refuses anything that is not a valid run id."""
        if not _RUN_ID.fullmatch(run_id):
            raise ValueError(f"not a run id: {run_id!r}")
        return self.history_dir / run_id[4:6] / f"{run_id}.jsonl"

    @contextmanager
    def _locked(self, run_id: str) -> Iterator[None]:
        fd = os.open(self.history_path(run_id).with_name(".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def update(
        self,
        run_id: str,
        decide: Decide,
        *,
        expected: int | None,
        now: datetime,
    ) -> tuple[dict[str, Any], bool] | None:
        """Apply ``decide`` to the run; (artifact now, changed) or None if it is absent.

        Blocking: run it in a thread. Raises RevisionConflictError when ``expected`` is stale.
        """
        with self._locked(run_id):
            place = self._log.place_of(run_id)
            if place is None:
                return None
            current: dict[str, Any] = json.loads(self._segments.read(place))
            proposed = propose(run_id, current, decide, expected, now)
            if proposed is None:
                return current, False
            new, entry = proposed
            self.log_current([current])
            self._write(new, entry)
            return new, True

    def _write(self, new: dict[str, Any], entry: dict[str, Any]) -> None:
        run_id = new["run_id"]
        history = self.history_path(run_id)
        line, data = encode(entry), encode(new)
        _append_line(history, line)
        with self._workspace.scratch() as scratch:
            intent = scratch.intent([run_id])
            [place] = self._segments.append([data])
            self._workspace.flush(files=[history, intent, self._segments.path(place.segment)])
            record = leaf_record(new, entry, artifact_bytes=data, entry_bytes=line)
            self._log.revise(record, place)
            self._index.upsert([new])
            self._workspace.flush()

    def log_current(self, artifacts: Iterable[dict[str, Any]]) -> None:
        """Give each artifact's current revision its leaf unless it has one (after a crash
        between the artifact's write and its leaf). Its entry is the history's, as readers see
        it."""
        records = []
        for artifact in artifacts:
            revision = artifact.get("revision")
            if not isinstance(revision, int) or self._log.has(artifact["run_id"], revision):
                continue
            if revision > 1:
                entries = {e["revision"]: e for e in self.history(artifact)}
                adopted = not self._log.has(artifact["run_id"], revision - 1)  # before the log
                if revision in entries:
                    records.append(leaf_record(artifact, entries[revision], adopted=adopted))
            elif revision == 1:
                records.append(leaf_record(artifact, created_entry(artifact)))
        self._log.append(records)

    def history(self, artifact: dict[str, Any]) -> list[dict[str, Any]]:
        """Every revision, oldest first: creation, then each change that reached the artifact."""
        entries: dict[int, dict[str, Any]] = {1: created_entry(artifact)}
        try:
            lines = self.history_path(artifact["run_id"]).read_bytes().splitlines()
        except FileNotFoundError:
            lines = []
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:  # torn by a crash before its flush: it never reached the artifact
                continue
            if 1 < entry["revision"] <= artifact["revision"]:
                entries[entry["revision"]] = entry  # the last one written wins
        return [entries[r] for r in sorted(entries)]


def _append_line(path: Path, line: bytes) -> None:
    """Append one line whole or not at all: a failed write (a full disk) is cut off again, and a
    line torn by a crash is ended first, so that it never swallows the next one."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        try:
            view = memoryview(line + b"\n")
            while view:
                view = view[os.write(fd, view) :]
        except BaseException:
            os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def propose(
    run_id: str, current: dict[str, Any], decide: Decide, expected: int | None, now: datetime
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The next revision of ``current`` and its history entry, or None when ``decide`` wants
    no change; every store's compare-and-swap writes exactly this.

    Raises ``RevisionConflictError`` when ``expected`` is not the current revision."""
    if expected is not None and current["revision"] != expected:
        raise RevisionConflictError(run_id, expected, current["revision"])
    wanted = decide(current)
    if wanted is None:
        return None
    new = _revised(current, wanted, now)
    return new, _history_entry(new, wanted, current)


def _revised(current: dict[str, Any], wanted: Change, now: datetime) -> dict[str, Any]:
    new = {**current, **wanted.updates}
    for key, value in wanted.updates.items():
        if value is None:
            del new[key]
    new["revision"] = current["revision"] + 1
    new["updated_at_utc"] = utc_text(now)
    if content_sha256(new) != current["content_sha256"]:
        raise ValueError(f"a {wanted.change} change may not touch the immutable core")
    return new


def changed_paths(before: dict[str, Any], after: dict[str, Any], keys: Iterable[str]) -> list[str]:
    """The paths that differ among ``keys``; inside ``meta``, one path per meta key."""
    paths = []
    for key in keys:
        old, new = before.get(key), after.get(key)
        if key == "meta" and isinstance(old, dict) and isinstance(new, dict):
            paths += [f"meta.{k}" for k in old.keys() | new.keys() if old.get(k) != new.get(k)]
        elif old != new:
            paths.append(key)
    return sorted(paths)


def _history_entry(new: dict[str, Any], wanted: Change, current: dict[str, Any]) -> dict[str, Any]:
    changed = changed_paths(current, new, wanted.updates)
    return {
        "revision": new["revision"],
        "at": new["updated_at_utc"],
        "change": wanted.change,
        "by": wanted.by,
        "changed": changed,
    }


def created_entry(artifact: dict[str, Any]) -> dict[str, Any]:
    return {
        "revision": 1,
        "at": artifact["recorded_at_utc"],
        "change": "created",
        "by": f"event {artifact['source']}:{artifact['event_id']}",
        "changed": [],
    }
