"""The JetStream store: runs, revisions, history and blobs replicated by NATS (CONTRACT section 8).

Where each thing lives (``P`` = ``RMOS_STREAM_PREFIX``)::

    KV bucket P_RUNS          key = run id, value = the artifact's bytes exactly as ``get``
                              returns them; each value's header ``Rmos-History-Seq`` names the
                              history entry of its revision (none at revision 1)
    stream P_RUN_HISTORY      one message per revision after the first, on
                              ``<root>.store.history.<run_id>``; header ``Rmos-Prev-Seq`` names
                              the entry of the revision before (a chain, newest first)
    stream P_LOG              the Merkle log (``contracts.transparency``): only leaves, one per
                              stored revision, on ``<root>.store.log.<run_id>``; the leaf at
                              stream sequence ``s`` is at position ``s - 1`` of the tree
    KV bucket P_BLOB_META     key = sha256, the blob's kind, mime, filename and size (first wins)
    Object Store P_BLOBS      object name = sha256, the bytes
    DATA_DIR/index.sqlite     this host's ``list`` index, a projection of P_RUNS (``projection``)
    DATA_DIR/log.sqlite       this host's copy of P_LOG: heads and proofs (``merkle_log``)

Every write is acknowledged by the stream leader after a quorum of replicas has it. Create-if-
absent is a publish with ``Nats-Expected-Last-Subject-Sequence: 0``; every later revision a
publish expecting the key's last sequence: the leader checks both under its lock, so they hold
across every writer on every host. Every read that decides something (idempotency, compare-and-
swap, verify, attachment checks) is a ``STREAM.MSG.GET`` answered by the leader, never a direct
get from a follower (which may lag behind an acknowledged write).

A revision's history entry is published before its compare-and-swap and named by it: an entry
whose swap lost is never named, so readers, who walk the chain from the artifact, never see it.
KV history per key is capped at 64 by JetStream; the chain is not.

A revision's leaf is published after the write that stores it, and acknowledged before that
write is (a batch's events are acked, an update returns, only then). Each leaf expects the
run's previous leaf as its subject's last sequence (``0`` for revision 1): whatever the number
of writers on whatever hosts, one leaf per revision lands, in revision order, and a writer that
lost the race finds its revision logged. A crash between a write and its leaf is repaired by the
next writer of the run: a create met again as a duplicate, and every update (before its swap,
and when it changes nothing) first gives the current revision its leaf if it has none.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
import nats.nuid
import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    PubAck,
    RawStreamMsg,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.object_store import ObjectStore

from contracts.canonical import canonical, sha256_hex
from contracts.subjects import Subjects
from contracts.transparency import leaf_record
from worker.core.timefmt import utc_now
from worker.core.verify import Check, attachment_hashes, parse_stored, verify_artifact
from worker.errors import StoreOutageError, TransientError, UnavailableError
from worker.store.base import BlobInfo, Created, Decide, Leaf, NewRun, Query, StoredRun
from worker.store.index import RunIndex
from worker.store.merkle_log import LogOutOfOrderError, MerkleLog
from worker.store.projection import KV_OPERATION, Feed, IndexSink, LogSink, Projection
from worker.store.revisions import created_entry, encode, propose
from worker.streams import PlacementError, scan_fetch

log = logging.getLogger(__name__)
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
HISTORY_HEADER = "Rmos-History-Seq"
PREV_HEADER = "Rmos-Prev-Seq"
WRONG_LAST_SEQUENCE = {10071, 10164}  # JSStreamWrongLastSequence(Constant)Err
NO_MESSAGE = 10037  # JSNoMessageFoundErr
STREAM_EXISTS_OTHERWISE = 10058  # JSStreamNameExistErr: in use with another configuration
CAS_ATTEMPTS = 64
IN_FLIGHT = 32  # runs adopted into the log at once
LIST_WAIT_S = 2.0  # CONTRACT section 8: every worker lists a run within 2 s
LOG_WAIT_S = 2.0  # how long ``logged`` waits for this host's copy of the log
SCAN_BATCH = 256
SCAN_WAIT_S = 5.0  # a full scan's fetch that gets nothing while runs are left: the store fails


# The server refuses for want of a leader, of space or of a quota, whatever the message: an
# outage (with HTTP-like code 503, e.g. 10077 "maximum bytes exceeded" of a full bucket, or not).
STORE_DOWN = {
    10002,  # JSAccountResourcesExceededErr
    10008,  # JSClusterNotAvailErr: JetStream system temporarily unavailable
    10009,  # JSClusterNotLeaderErr
    10023,  # JSInsufficientResourcesErr
    10028,  # JSMemoryResourcesExceededErr
    10047,  # JSStorageResourcesExceededErr
}


class AmbiguousWriteError(StoreOutageError):
    """A write whose outcome is unknown (no PubAck in time, no leader): it may have landed."""


class ForeignLogError(PlacementError):
    """The data dir's ``log.sqlite`` holds leaves but is no copy of a log stream: a files
    store's log, which is the only copy of its leaves and is never emptied for another."""


class JetStreamStore:
    """Runs, blobs and the log in JetStream; the ``list`` index and the copy of the log in
    ``data_dir`` (see the module docstring)."""

    def __init__(
        self,
        js_of: Callable[[], JetStreamContext],
        connect: Callable[[], Awaitable[Client]],
        subjects: Subjects,
        data_dir: Path,
        *,
        replicas: int = 1,
        timeout: float = 5.0,
    ) -> None:
        self._js_of = js_of
        self._timeout = timeout
        self.replicas = replicas
        prefix = subjects.stream_prefix
        self.runs_bucket = f"{prefix}_RUNS"
        self.runs_stream = f"KV_{self.runs_bucket}"
        self.blob_meta_bucket = f"{prefix}_BLOB_META"
        self.blobs_bucket = f"{prefix}_BLOBS"
        self.history_stream = f"{prefix}_RUN_HISTORY"
        self._history_subject = f"{subjects.root}.store.history"
        self.log_stream = f"{prefix}_LOG"
        self._log_subject = f"{subjects.root}.store.log"
        self.data_dir = data_dir
        # No fsync per batch (synchronous=NORMAL): a tail lost to a power cut is applied again,
        # as the applied sequence is in the same transactions as the rows (or the leaves).
        self.index = RunIndex(data_dir / "index.sqlite", flushed_by_caller=True)
        self._log = MerkleLog(data_dir / "log.sqlite", flushed_by_caller=True)
        index = Feed(
            js_of, self.runs_stream, f"$KV.{self.runs_bucket}.>",
            IndexSink(self.index, f"$KV.{self.runs_bucket}."), name="list index", measured=True,
        )  # fmt: skip
        self.projection = Projection(
            connect, data_dir / "projection.lock", index, [self._log_feed(js_of)]
        )
        self._objects: ObjectStore | None = None
        self._written = 0  # the highest sequence of the runs stream this process acknowledged

    @property
    def _js(self) -> JetStreamContext:
        return self._js_of()

    def _log_feed(self, js_of: Callable[[], JetStreamContext]) -> Feed:
        """The log stream into this host's copy (``projection``)."""
        subject = f"{self._log_subject}.*"
        return Feed(js_of, self.log_stream, subject, LogSink(self._log), name="log copy")

    async def open(self) -> None:
        """Declare the buckets and the streams (replicated), open the local index and the copy
        of the log. ``ForeignLogError`` when the data dir holds a files store's log."""
        await self.declare()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self.index.open)
        await asyncio.to_thread(self._log.open)
        await asyncio.to_thread(self._own_copy)

    def _own_copy(self) -> None:
        """Refuse a ``log.sqlite`` that is not a copy of a log stream (``ForeignLogError``)."""
        if "stream_created" not in self._log.state() and self._log.size():
            raise ForeignLogError(
                f"{self._log.path} holds a files store's Merkle log ({self._log.size()} "
                "leaves), the only copy of them: give the jetstream store another data dir"
            )

    async def declare(self) -> None:
        """Create the buckets and the streams, or bring them to this store's replicas."""
        js = self._js
        for kv in (self.runs_bucket, self.blob_meta_bucket):
            config = KeyValueConfig(
                bucket=kv, history=1, replicas=self.replicas, storage=StorageType.FILE, direct=False
            )
            await self._declared(f"KV_{kv}", js.create_key_value(config))
        history = StreamConfig(
            name=self.history_stream,
            subjects=[f"{self._history_subject}.*"],
            storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS,
            num_replicas=self.replicas,
            deny_delete=True,
        )
        await self._declared(self.history_stream, js.add_stream(history))
        leaves = StreamConfig(
            name=self.log_stream,
            subjects=[f"{self._log_subject}.*"],
            storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS,
            num_replicas=self.replicas,
            deny_delete=True,  # append-only: no leaf is ever taken out of the tree
            deny_purge=True,
        )
        await self._declared(self.log_stream, js.add_stream(leaves))
        blobs = ObjectStoreConfig(replicas=self.replicas, storage=StorageType.FILE)
        await self._declared(
            f"OBJ_{self.blobs_bucket}", js.create_object_store(self.blobs_bucket, blobs)
        )
        self._objects = await js.object_store(self.blobs_bucket)

    async def _declared(self, stream: str, declare: Awaitable[object]) -> None:
        """Run a declaration; a stream that exists with other settings (replicas, say) is
        brought to this store's replicas instead."""
        try:
            await declare
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != STREAM_EXISTS_OTHERWISE:
                raise
            config = (await self._js.stream_info(stream)).config
            log.warning("stream %s exists with other settings: updating its replicas", stream)
            config.num_replicas = self.replicas
            await self._js.update_stream(config)

    def close(self) -> None:
        self.index.close()
        self._log.close()

    # -- low-level reads and writes ---------------------------------------------------------

    def _run_subject(self, run_id: str) -> str:
        return f"$KV.{self.runs_bucket}.{run_id}"

    async def _last(self, stream: str, subject: str) -> RawStreamMsg | None:
        """The last message on ``subject``, read from the stream leader; None when none."""
        try:
            return await self._js.get_msg(stream, subject=subject, direct=False)
        except nats.js.errors.NotFoundError as exc:
            if exc.err_code == NO_MESSAGE:
                return None
            raise StoreOutageError(f"{stream}: {exc.description}") from exc  # the stream is gone
        except (nats.errors.Error, TimeoutError) as exc:
            raise StoreOutageError(f"read from {stream} failed: {exc!r}") from exc

    async def _publish(
        self, subject: str, data: bytes, headers: dict[str, str], *, stream: str
    ) -> PubAck:
        """A publish acknowledged by the leader; ``AmbiguousWriteError`` when no answer came."""
        try:
            return await self._js.publish(
                subject, data, timeout=self._timeout, stream=stream, headers=headers
            )
        except nats.js.errors.APIError as exc:
            if exc.err_code in WRONG_LAST_SEQUENCE:
                raise
            if exc.code == 503 or exc.err_code in STORE_DOWN:  # refused: it did not land
                raise StoreOutageError(f"write to {stream} refused: {exc.description}") from exc
            raise TransientError(f"write to {stream} refused: {exc.description}") from exc
        except (nats.errors.Error, TimeoutError) as exc:  # no answer, no responders: no leader
            raise AmbiguousWriteError(f"write to {stream} unconfirmed: {exc!r}") from exc

    async def _read_run(self, run_id: str) -> tuple[dict[str, Any], RawStreamMsg] | None:
        msg = await self._last(self.runs_stream, self._run_subject(run_id))
        if msg is None or _deleted(msg):
            return None
        return orjson.loads(msg.data or b"null"), msg

    def _saw(self, seq: int | None) -> None:
        if seq is not None and seq > self._written:
            self._written = seq

    # -- runs ------------------------------------------------------------------------------

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        found = await self._read_run(run_id)
        return None if found is None else found[0]

    async def create_runs(self, runs: Sequence[NewRun]) -> list[Created]:
        """Every create of the batch in flight together, each followed by its leaf; the batch
        is durable when each has both PubAcks. An ambiguous outcome raises (the batch is
        nacked; the redelivery reads, and logs a run it finds without its leaf)."""
        results = await asyncio.gather(*(self._create(run) for run in runs), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        for failure in sorted(failures, key=lambda f: not isinstance(f, StoreOutageError)):
            if isinstance(failure, TransientError):  # an outage first: the batch waits it out
                raise failure
            raise TransientError(f"create failed: {failure!r}") from failure
        return [r for r in results if isinstance(r, Created)]

    async def _create(self, run: NewRun) -> Created:
        headers = {EXPECTED_LAST_SUBJECT_SEQ: "0"}
        subject = self._run_subject(run.run_id)
        data = run.encoded()
        try:
            ack = await self._publish(subject, data, headers, stream=self.runs_stream)
        except nats.js.errors.APIError:  # the key exists: who holds it?
            found = await self._read_run(run.run_id)
            if found is None:  # a leader just elected, not yet caught up
                raise StoreOutageError(f"{run.run_id} exists but cannot be read") from None
            await self._log_current(run.run_id, *found)  # its create crashed before the leaf
            self._saw(found[1].seq)  # acknowledged as a duplicate: list must show it too
            return Created(False, found[0])
        self._saw(ack.seq)
        record = leaf_record(run.artifact, created_entry(run.artifact), artifact_bytes=data)
        await self._append_leaf(run.run_id, record, after=0)
        return Created(True, run.artifact)

    async def update_run(
        self, run_id: str, decide: Decide, *, expected_revision: int | None = None
    ) -> tuple[dict[str, Any], bool] | None:
        """Compare-and-swap one change: the current revision's leaf if it lacks one, history
        entry, then the artifact expecting the key's last sequence, then the new revision's
        leaf; a lost swap reads again and decides again. A change that is not wanted still
        logs the current revision (a change redelivered after a crash before its leaf)."""
        now = utc_now()
        for _ in range(CAS_ATTEMPTS):
            found = await self._read_run(run_id)
            if found is None:
                return None
            current, msg = found
            proposed = propose(run_id, current, decide, expected_revision, now)
            logged = await self._log_current(run_id, current, msg)
            if proposed is None:
                return current, False
            new, entry = proposed
            entry_seq = await self._append_history(run_id, entry, msg)
            headers = {EXPECTED_LAST_SUBJECT_SEQ: str(msg.seq), HISTORY_HEADER: str(entry_seq)}
            data = encode(new)
            try:
                ack = await self._publish(
                    self._run_subject(run_id), data, headers, stream=self.runs_stream
                )
            except nats.js.errors.APIError:  # lost the swap: someone else changed it first
                await asyncio.sleep(random.uniform(0, 0.005))
                continue
            except AmbiguousWriteError:
                landed = await self._landed(run_id, entry_seq)
                if landed is None:
                    raise
                self._saw(landed)
            else:
                self._saw(ack.seq)
            record = leaf_record(new, entry, artifact_bytes=data)
            await self._append_leaf(run_id, record, after=logged)
            return new, True
        raise TransientError(f"{run_id} kept changing under {CAS_ATTEMPTS} attempts; try again")

    async def _landed(self, run_id: str, entry_seq: int) -> int | None:
        """After an unconfirmed swap: the artifact's sequence if it now names our history
        entry (the swap landed), else None."""
        try:
            found = await self._read_run(run_id)
        except TransientError:
            return None
        if found is None or (found[1].headers or {}).get(HISTORY_HEADER) != str(entry_seq):
            return None
        return found[1].seq

    async def _append_history(
        self, run_id: str, entry: dict[str, Any], current: RawStreamMsg
    ) -> int:
        prev = (current.headers or {}).get(HISTORY_HEADER, "")
        ack = await self._publish(
            f"{self._history_subject}.{run_id}",
            encode(entry),
            {PREV_HEADER: prev},
            stream=self.history_stream,
        )
        return ack.seq

    async def _chain(
        self, run_id: str, headers: dict[str, str] | None, limit: int
    ) -> list[RawStreamMsg]:
        """The history entries named from an artifact's headers, newest first, at most
        ``limit`` (bounded: a forged header cannot loop it)."""
        seq = (headers or {}).get(HISTORY_HEADER)
        chain: list[RawStreamMsg] = []
        while seq and len(chain) < limit:
            try:
                entry_msg = await self._js.get_msg(self.history_stream, seq=int(seq))
            except (nats.errors.Error, TimeoutError) as exc:
                raise StoreOutageError(f"history of {run_id} unreadable: {exc!r}") from exc
            chain.append(entry_msg)
            seq = (entry_msg.headers or {}).get(PREV_HEADER)
        return chain

    # -- the Merkle log: writes --------------------------------------------------------------

    def _leaf_subject(self, run_id: str) -> str:
        return f"{self._log_subject}.{run_id}"

    async def _last_leaf(self, run_id: str) -> tuple[int, int]:
        """(revision, stream sequence) of the run's last leaf, read from the leader; (0, 0)
        when the run has none."""
        msg = await self._last(self.log_stream, self._leaf_subject(run_id))
        if msg is None:
            return 0, 0
        revision = _revision(msg.data or b"")
        if revision is None:
            raise TransientError(f"the last leaf of {run_id} (at {msg.seq}) is not a leaf")
        return revision, msg.seq or 0

    async def _append_leaf(self, run_id: str, record: dict[str, Any], *, after: int) -> int:
        """Publish ``record`` as the run's next leaf, expecting the run's last leaf at stream
        sequence ``after`` (0: none); returns the sequence of the run's last leaf then.

        A wrong last sequence means another writer logged first: the run's last leaf is read
        again, and this revision (or a later one) found there is the answer; else the leaf is
        published after the one found. An unconfirmed publish is read back the same way."""
        revision = record["revision"]
        data = canonical(record)
        subject = self._leaf_subject(run_id)
        for _ in range(CAS_ATTEMPTS):
            headers = {EXPECTED_LAST_SUBJECT_SEQ: str(after)}
            try:
                ack = await self._publish(subject, data, headers, stream=self.log_stream)
            except nats.js.errors.APIError:  # wrong last sequence: someone logged meanwhile
                pass
            except AmbiguousWriteError:
                logged, last = await self._last_leaf(run_id)
                if logged < revision:
                    raise
                return last
            else:
                return ack.seq
            logged, after = await self._last_leaf(run_id)
            if logged >= revision:
                return after
            if logged < revision - 1:  # stored before the log, or by a writer without it
                log.warning(
                    "run %s: revisions %d to %d have no leaf", run_id, logged + 1, revision - 1
                )
        raise TransientError(f"the log of {run_id} kept growing under {CAS_ATTEMPTS} attempts")

    async def _log_current(self, run_id: str, artifact: dict[str, Any], msg: RawStreamMsg) -> int:
        """Give the stored revision its leaf unless the log has it (a crash came between its
        write and its leaf); returns the sequence of the run's last leaf. A revision whose
        history entry is not found (a value written behind the store's back) stays unlogged."""
        revision = artifact.get("revision")
        logged, last = await self._last_leaf(run_id)
        if not isinstance(revision, int) or logged >= revision:
            return last
        entry: Any = created_entry(artifact) if revision == 1 else None
        if revision > 1:
            chain = await self._chain(run_id, msg.headers, 1)
            entry = json.loads(chain[0].data or b"null") if chain else None
        if not isinstance(entry, dict) or entry.get("revision") != revision:
            log.warning("run %s: revision %d has no history entry: not logged", run_id, revision)
            return last
        adopted = logged == 0 and revision > 1  # stored before the log existed
        record = leaf_record(artifact, entry, adopted=adopted)
        return await self._append_leaf(run_id, record, after=last)

    async def adopt_unlogged(self) -> int:
        """Log every run that has no leaf (stored before the log), as it stands; 32 at once."""
        adopted = 0
        pending: set[asyncio.Task[bool]] = set()
        async for run in self.stored_runs():
            if len(pending) >= IN_FLIGHT:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                adopted += sum(task.result() for task in done)
            pending.add(asyncio.create_task(self._adopt_one(run)))
        adopted += sum(await asyncio.gather(*pending))
        return adopted

    async def _adopt_one(self, run: StoredRun) -> bool:
        if (await self._last_leaf(run.run_id))[0] > 0:
            return False
        artifact = json.loads(run.artifact)
        revision = artifact["revision"]
        entry = created_entry(artifact) if revision == 1 else json.loads(run.history[-1])
        record = leaf_record(artifact, entry, adopted=revision > 1)
        await self._append_leaf(run.run_id, record, after=0)
        return True

    async def adopt(
        self,
        artifact: dict[str, Any],
        history: list[dict[str, Any]],
        leaves: Sequence[dict[str, Any]] = (),
    ) -> str:
        """Store a run made elsewhere (``migrate``) with its history, unless the run id is held:
        ``"copied"``, ``"present"`` (the same run, at this revision or later) or ``"conflict"``.

        The history's entries go first (revisions 2..), chained, then the artifact is created
        naming the last: interrupted and run again, it leaves only unnamed entries behind.
        Then ``leaves`` (the source's leaf records of the run) are logged in revision order, and
        the current revision if they lack it; a run found at this revision gets those it lacks."""
        run_id = artifact["run_id"]
        found = await self.get_run(run_id)
        if found is None:
            found, outcome = await self._copy(artifact, history)
        else:
            outcome = _held(found, artifact)
        same_revision = found is not None and found["revision"] == artifact["revision"]
        if outcome != "conflict" and same_revision:
            await self._adopt_leaves(artifact, history, leaves)
        return outcome

    async def _copy(
        self, artifact: dict[str, Any], history: list[dict[str, Any]]
    ) -> tuple[dict[str, Any] | None, str]:
        """Create a run with its history (``adopt``); the run stored now, and the outcome."""
        run_id = artifact["run_id"]
        prev = ""
        for entry in history[1:]:
            ack = await self._publish(
                f"{self._history_subject}.{run_id}",
                encode(entry),
                {PREV_HEADER: prev},
                stream=self.history_stream,
            )
            prev = str(ack.seq)
        headers = {EXPECTED_LAST_SUBJECT_SEQ: "0"}
        if prev:
            headers[HISTORY_HEADER] = prev
        try:
            await self._publish(
                self._run_subject(run_id), encode(artifact), headers, stream=self.runs_stream
            )
        except nats.js.errors.APIError:  # created meanwhile
            found = await self.get_run(run_id)
            return found, "conflict" if found is None else _held(found, artifact)
        return artifact, "copied"

    async def _adopt_leaves(
        self,
        artifact: dict[str, Any],
        history: list[dict[str, Any]],
        leaves: Sequence[dict[str, Any]],
    ) -> None:
        """Log a copied run as its source's log has it: the leaves after those this log holds,
        by revision, then the current revision's when the source has none for it."""
        run_id, revision = artifact["run_id"], artifact["revision"]
        logged, last = await self._last_leaf(run_id)
        records = sorted(
            (r for r in leaves if logged < r["revision"] <= revision), key=lambda r: r["revision"]
        )
        if logged < revision and not (records and records[-1]["revision"] == revision):
            entry = next((e for e in history if e.get("revision") == revision), None)
            if entry is not None:
                records.append(leaf_record(artifact, entry))
        for record in records:
            last = await self._append_leaf(run_id, record, after=last)

    # -- the Merkle log: this host's copy ----------------------------------------------------

    @property
    def log(self) -> MerkleLog:
        """This host's copy of the log stream (kept by ``projection``): a prefix of the log."""
        return self._log

    async def log_reaches(self, size: int, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while await asyncio.to_thread(self._log.size) < size:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def logged(self, run_id: str) -> list[Leaf]:
        """The run's leaves from this host's copy, once it holds the run's last leaf as the
        leader has it now; ``UnavailableError`` when the copy stays behind."""
        msg = await self._last(self.log_stream, self._leaf_subject(run_id))
        last = 0 if msg is None else msg.seq or 0
        if not await self.log_reaches(last, LOG_WAIT_S):
            have = await asyncio.to_thread(self._log.size)
            raise UnavailableError(
                f"the log copy is behind (at {have} leaves; the last leaf of {run_id} is {last})"
            )
        return await asyncio.to_thread(self._log.leaves_of, run_id)

    async def log_size(self) -> int:
        try:
            return int((await self._js.stream_info(self.log_stream)).state.last_seq)
        except (nats.errors.Error, TimeoutError) as exc:
            raise StoreOutageError(f"{self.log_stream} unreadable: {exc!r}") from exc

    async def catch_up_log(self) -> int:
        """Bring this host's copy up to the log stream's last sequence now, on this event loop
        and connection (no follower needed: an audit on a fresh data dir); the copy's size.
        Needs only ``log`` open. ``BadLeafError`` (``projection``) when the stream holds a
        message the copy cannot hold; ``ForeignLogError`` for a files store's log."""
        await asyncio.to_thread(self._own_copy)
        feed = self._log_feed(lambda: self._js)
        never = threading.Event()
        for _ in range(CAS_ATTEMPTS):
            try:
                last = (await self._js.stream_info(self.log_stream)).state.last_seq
                await feed.follow(self._js, never, until=last, offload=True)
            except LogOutOfOrderError:  # another process applied meanwhile: from its state
                continue
            except nats.js.errors.NotFoundError as exc:
                raise StoreOutageError(f"{self.log_stream}: {exc.description}") from exc
            except (nats.errors.Error, TimeoutError) as exc:
                raise StoreOutageError(f"reading {self.log_stream} failed: {exc!r}") from exc
            size = await asyncio.to_thread(self._log.size)
            if size >= last:
                return size
        raise TransientError(f"the copy of {self.log_stream} did not catch up; try again")

    async def stored_runs(self) -> AsyncIterator[StoredRun]:
        """Every run in the bucket (a full scan, for ``audit``): each key's value as it was
        when the scan began, through an ephemeral consumer (last per subject), with the
        history entries its chain names, oldest first. Deleted keys are skipped."""
        js, prefix = self._js, f"$KV.{self.runs_bucket}."
        name = nats.nuid.NUID().next().decode()
        config = ConsumerConfig(
            name=name,
            filter_subject=f"{prefix}>",
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            inactive_threshold=300.0,
            mem_storage=True,
            num_replicas=1,
        )
        try:
            info = await js.add_consumer(self.runs_stream, config=config)
            sub = await js.pull_subscribe_bind(name, stream=self.runs_stream)
        except (nats.errors.Error, TimeoutError) as exc:
            raise StoreOutageError(f"cannot scan {self.runs_stream}: {exc!r}") from exc
        total, delivered = info.num_pending or 0, 0  # the keys when the consumer was made
        try:
            while delivered < total:
                batch = min(SCAN_BATCH, total - delivered)
                msgs = await scan_fetch(sub, batch, SCAN_WAIT_S, self.runs_stream)
                for msg in msgs:
                    if msg.metadata.sequence.consumer != delivered + 1:
                        raise TransientError(f"the scan of {self.runs_stream} lost messages")
                    delivered += 1
                    if (msg.headers or {}).get(KV_OPERATION) not in {"DEL", "PURGE"}:
                        yield await self._stored_run(msg.subject.removeprefix(prefix), msg)
                    if delivered == total:
                        break
        finally:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await sub.unsubscribe()
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await js.delete_consumer(self.runs_stream, name)

    async def _stored_run(self, run_id: str, msg: Msg) -> StoredRun:
        data = bytes(msg.data)
        revision = _revision(data)
        limit = revision - 1 if revision is not None else 0
        chain = await self._chain(run_id, msg.headers, limit)
        return StoredRun(run_id, data, [m.data or b"" for m in reversed(chain)])

    async def history(self, run_id: str) -> list[dict[str, Any]] | None:
        """Every revision, oldest first: the chain of entries named from the artifact."""
        found = await self._read_run(run_id)
        if found is None:
            return None
        artifact, msg = found
        revisions = artifact.get("revision")
        limit = revisions - 1 if isinstance(revisions, int) else 0
        chain = await self._chain(run_id, msg.headers, limit)
        return [created_entry(artifact)] + [json.loads(m.data or b"{}") for m in reversed(chain)]

    async def list_runs(self, query: Query) -> list[dict[str, Any]]:
        """From this host's index, once it holds everything this process acknowledged."""
        written = self._written
        reached = await self.projection.wait_applied(written, LIST_WAIT_S)
        if reached < written and self._written == written:  # those writes went with the bucket
            self._written = reached
        return await asyncio.to_thread(self.index.query, query)

    async def verify_run(self, run_id: str) -> list[Check] | None:
        """The checks of a run, from the bytes the leader holds now (never a cache)."""
        msg = await self._last(self.runs_stream, self._run_subject(run_id))
        if msg is None or _deleted(msg):
            return None
        artifact = parse_stored(msg.data or b"")
        if isinstance(artifact, Check):
            return [artifact]
        blobs = {sha: await self._blob_facts(sha) for sha in attachment_hashes(artifact)}
        return verify_artifact(artifact, blobs, run_id=run_id)

    # -- blobs -----------------------------------------------------------------------------

    @property
    def _object_store(self) -> ObjectStore:
        assert self._objects is not None, "open() the store first"
        return self._objects

    async def get_blob_info(self, sha256: str) -> BlobInfo | None:
        msg = await self._last(
            f"KV_{self.blob_meta_bucket}", f"$KV.{self.blob_meta_bucket}.{sha256}"
        )
        if msg is None or _deleted(msg):
            return None
        return BlobInfo(**json.loads(msg.data or b"{}"))

    async def blob_size(self, sha256: str) -> int | None:
        info = await self.get_blob_info(sha256)
        return None if info is None else info.size_bytes

    async def put_blob(self, data: bytes, *, kind: str, mime: str, filename: str) -> BlobInfo:
        """The bytes first, then the metadata created if absent: metadata names only stored
        bytes, and the first metadata stays."""
        info = BlobInfo(sha256_hex(data), len(data), kind, mime, filename)
        stored = await self.get_blob_info(info.sha256)
        if stored is not None:
            return stored
        try:
            await self._object_store.put(info.sha256, data)
        except (nats.errors.Error, TimeoutError) as exc:
            raise StoreOutageError(f"blob not stored: {exc!r}") from exc
        subject = f"$KV.{self.blob_meta_bucket}.{info.sha256}"
        with contextlib.suppress(nats.js.errors.APIError):  # another put was first: it stays
            await self._publish(
                subject,
                encode(asdict(info)),
                {EXPECTED_LAST_SUBJECT_SEQ: "0"},
                stream=f"KV_{self.blob_meta_bucket}",
            )
        return await self.get_blob_info(info.sha256) or info

    async def _blob_bytes(self, sha256: str) -> bytes | None:
        try:
            result = await self._object_store.get(sha256)
        except nats.js.errors.ObjectNotFoundError:
            return None
        except nats.js.errors.DigestMismatchError as exc:  # this blob's fault, not the store's
            raise TransientError(f"blob {sha256} unreadable: {exc!r}") from exc
        except (nats.errors.Error, TimeoutError) as exc:
            raise StoreOutageError(f"blob {sha256} unreadable: {exc!r}") from exc
        return bytes(result.data or b"")

    async def _blob_facts(self, sha256: str) -> tuple[str, int] | None:
        try:
            data = await self._blob_bytes(sha256)
        except TransientError as exc:
            if isinstance(exc.__cause__, nats.js.errors.DigestMismatchError):
                return "stored bytes differ from the object's digest", -1
            raise
        return None if data is None else (sha256_hex(data), len(data))

    async def get_blob(self, sha256: str) -> tuple[bytes, BlobInfo] | None:
        info = await self.get_blob_info(sha256)
        data = await self._blob_bytes(sha256) if info is not None else None
        return None if data is None or info is None else (data, info)


def _held(found: dict[str, Any], artifact: dict[str, Any]) -> str:
    """``present`` when the stored run is this one, at its revision or later; else a conflict."""
    same = found["content_sha256"] == artifact["content_sha256"]
    return "present" if same and found["revision"] >= artifact["revision"] else "conflict"


def _deleted(msg: RawStreamMsg) -> bool:
    return (msg.headers or {}).get(KV_OPERATION) in {"DEL", "PURGE"}


def _revision(data: bytes) -> int | None:
    """The ``revision`` of a stored JSON object (an artifact, a leaf); None when it has none."""
    try:
        document = json.loads(data)
    except ValueError:
        return None
    revision = document.get("revision") if isinstance(document, dict) else None
    return revision if isinstance(revision, int) else None
