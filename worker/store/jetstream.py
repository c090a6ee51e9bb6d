"""The JetStream store: runs, revisions, history and blobs replicated by NATS (CONTRACT section 8).

Where each thing lives (``P`` = ``RMOS_STREAM_PREFIX``)::

    KV bucket P_RUNS          key = run id, value = the artifact's bytes exactly as ``get``
                              returns them; each value's header ``Rmos-History-Seq`` names the
                              history entry of its revision (none at revision 1)
    stream P_RUN_HISTORY      one message per revision after the first, on
                              ``<root>.store.history.<run_id>``; header ``Rmos-Prev-Seq`` names
                              the entry of the revision before (a chain, newest first)
    KV bucket P_BLOB_META     key = sha256, the blob's kind, mime, filename and size (first wins)
    Object Store P_BLOBS      object name = sha256, the bytes
    DATA_DIR/index.sqlite     this host's ``list`` index, a projection of P_RUNS (``projection``)

Every write is acknowledged by the stream leader after a quorum of replicas has it. Create-if-
absent is a publish with ``Nats-Expected-Last-Subject-Sequence: 0``; every later revision a
publish expecting the key's last sequence: the leader checks both under its lock, so they hold
across every writer on every host. Every read that decides something (idempotency, compare-and-
swap, verify, attachment checks) is a ``STREAM.MSG.GET`` answered by the leader, never a direct
get from a follower (which may lag behind an acknowledged write).

A revision's history entry is published before its compare-and-swap and named by it: an entry
whose swap lost is never named, so readers, who walk the chain from the artifact, never see it.
KV history per key is capped at 64 by JetStream; the chain is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    KeyValueConfig,
    ObjectStoreConfig,
    PubAck,
    RawStreamMsg,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.object_store import ObjectStore

from contracts.canonical import sha256_hex
from contracts.subjects import Subjects
from worker.core.timefmt import utc_now
from worker.core.verify import Check, attachment_hashes, parse_stored, verify_artifact
from worker.errors import StoreOutageError, TransientError
from worker.store.base import BlobInfo, Created, NewRun
from worker.store.index import Query, RunIndex
from worker.store.projection import Projection
from worker.store.revisions import Decide, created_entry, encode, propose

log = logging.getLogger(__name__)
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
HISTORY_HEADER = "Rmos-History-Seq"
PREV_HEADER = "Rmos-Prev-Seq"
WRONG_LAST_SEQUENCE = {10071, 10164}  # JSStreamWrongLastSequence(Constant)Err
NO_MESSAGE = 10037  # JSNoMessageFoundErr
STREAM_EXISTS_OTHERWISE = 10058  # JSStreamNameExistErr: in use with another configuration
CAS_ATTEMPTS = 64
LIST_WAIT_S = 2.0  # CONTRACT section 8: every worker lists a run within 2 s


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


class JetStreamStore:
    """Runs and blobs in JetStream; the ``list`` index in ``data_dir`` (see the docstring)."""

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
        self.data_dir = data_dir
        # No fsync per batch (synchronous=NORMAL): a tail lost to a power cut is applied again,
        # as the applied sequence is in the same transactions as the rows.
        self.index = RunIndex(data_dir / "index.sqlite", flushed_by_caller=True)
        self.projection = Projection(
            js_of, connect, self.runs_stream, f"$KV.{self.runs_bucket}.", self.index,
            data_dir / "projection.lock",
        )  # fmt: skip
        self._objects: ObjectStore | None = None
        self._written = 0  # the highest sequence of the runs stream this process acknowledged

    @property
    def _js(self) -> JetStreamContext:
        return self._js_of()

    async def open(self) -> None:
        """Declare the buckets and the history stream (replicated), open the local index."""
        await self.declare()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self.index.open)

    async def declare(self) -> None:
        """Create the buckets and the history stream, or bring them to this store's replicas."""
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
        return json.loads(msg.data or b"null"), msg

    def _saw(self, seq: int | None) -> None:
        if seq is not None and seq > self._written:
            self._written = seq

    # -- runs ------------------------------------------------------------------------------

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        found = await self._read_run(run_id)
        return None if found is None else found[0]

    async def create_runs(self, runs: Sequence[NewRun]) -> list[Created]:
        """Every create of the batch in flight together; the batch is durable when each has its
        PubAck. An ambiguous outcome raises (the batch is nacked; the redelivery reads)."""
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
        try:
            ack = await self._publish(
                subject, encode(run.artifact), headers, stream=self.runs_stream
            )
        except nats.js.errors.APIError:  # the key exists: who holds it?
            found = await self._read_run(run.run_id)
            if found is None:  # a leader just elected, not yet caught up
                raise StoreOutageError(f"{run.run_id} exists but cannot be read") from None
            self._saw(found[1].seq)  # acknowledged as a duplicate: list must show it too
            return Created(False, found[0])
        self._saw(ack.seq)
        return Created(True, run.artifact)

    async def update_run(
        self, run_id: str, decide: Decide, *, expected_revision: int | None = None
    ) -> tuple[dict[str, Any], bool] | None:
        """Compare-and-swap one change: history entry first, then the artifact expecting the
        key's last sequence; a lost swap reads again and decides again."""
        now = utc_now()
        for _ in range(CAS_ATTEMPTS):
            found = await self._read_run(run_id)
            if found is None:
                return None
            current, msg = found
            proposed = propose(run_id, current, decide, expected_revision, now)
            if proposed is None:
                return current, False
            new, entry = proposed
            entry_seq = await self._append_history(run_id, entry, msg)
            headers = {EXPECTED_LAST_SUBJECT_SEQ: str(msg.seq), HISTORY_HEADER: str(entry_seq)}
            try:
                ack = await self._publish(
                    self._run_subject(run_id), encode(new), headers, stream=self.runs_stream
                )
            except nats.js.errors.APIError:  # lost the swap: someone else changed it first
                await asyncio.sleep(random.uniform(0, 0.005))
                continue
            except AmbiguousWriteError:
                landed = await self._landed(run_id, entry_seq)
                if landed is None:
                    raise
                self._saw(landed)
                return new, True
            self._saw(ack.seq)
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

    async def adopt(self, artifact: dict[str, Any], history: list[dict[str, Any]]) -> str:
        """Store a run made elsewhere (``migrate``) with its history, unless the run id is held:
        ``"copied"``, ``"present"`` (the same run, at this revision or later) or ``"conflict"``.

        The history's entries go first (revisions 2..), chained, then the artifact is created
        naming the last: interrupted and run again, it leaves only unnamed entries behind."""
        run_id = artifact["run_id"]
        found = await self.get_run(run_id)
        if found is not None:
            return _held(found, artifact)
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
            return "conflict" if found is None else _held(found, artifact)
        return "copied"

    async def history(self, run_id: str) -> list[dict[str, Any]] | None:
        """Every revision, oldest first: the chain of entries named from the artifact."""
        found = await self._read_run(run_id)
        if found is None:
            return None
        artifact, msg = found
        entries = [created_entry(artifact)]
        seq = (msg.headers or {}).get(HISTORY_HEADER)
        chain: list[dict[str, Any]] = []
        revisions = artifact.get("revision")
        limit = revisions - 1 if isinstance(revisions, int) else 0
        while seq and len(chain) < limit:  # bounded: a forged header cannot loop it
            try:
                entry_msg = await self._js.get_msg(self.history_stream, seq=int(seq))
            except (nats.errors.Error, TimeoutError) as exc:
                raise StoreOutageError(f"history of {run_id} unreadable: {exc!r}") from exc
            chain.append(json.loads(entry_msg.data or b"{}"))
            seq = (entry_msg.headers or {}).get(PREV_HEADER)
        return entries + chain[::-1]

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
    return (msg.headers or {}).get("KV-Operation") in {"DEL", "PURGE"}
