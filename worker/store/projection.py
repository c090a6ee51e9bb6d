"""What a JetStream store keeps of its streams on each host: the ``list`` index and the log copy.

The streams are the source of truth; under the data dir each host keeps what it has applied of
two of them: the ``list`` index (``RunIndex``, a projection of the runs bucket's stream) and its
copy of the Merkle log (``MerkleLog``, the leaves of the log stream). Each is a ``Feed``: a stream
followed into a ``Sink`` with an ephemeral pull consumer from the sink's applied sequence, each
batch applied with that sequence in one SQLite transaction: a crash keeps a batch whole or not at
all, and the feed resumes where its sink stands. One process per data dir (an ``flock`` on
``projection.lock``) follows every feed: the ``Projection``, with a thread, an event loop and a
NATS connection of its own, so that a worker busy ingesting does not starve it. Other processes
sharing the data dir read the same files and their states.

Each sink's state keeps its stream's creation time: a stream that was deleted and recreated has
another, and the sink is emptied and rebuilt from the new stream's first message (a sink left by
an earlier stream would otherwise resume at a sequence that means nothing now). While the index
is rebuilding below the stream's last sequence at its start, ``list`` answers ``UNAVAILABLE``;
the log copy is a prefix of the log at every moment, and serves proofs throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from worker.errors import UnavailableError
from worker.metrics import PROJECTION_LAG, PROJECTION_LAG_SECONDS
from worker.store.index import RunIndex
from worker.store.merkle_log import LogOutOfOrderError, MerkleLog

log = logging.getLogger(__name__)
BATCH = 500
FETCH_WAIT_S = 0.25  # one idle fetch; also how soon a stop is noticed
CHECK_EVERY_S = 2.0  # how often an idle follower checks that its stream is the same stream
STALL_S = 10.0  # a catch-up that gets nothing for this long while behind gives up
RETRY_S = 1.0
BAD_LEAF_RETRY_S = 30.0
KV_OPERATION = "KV-Operation"


class BadLeafError(Exception):
    """A message of the log stream that the copy cannot hold: not a leaf record, or a second
    leaf for one revision (published behind the store's back). The copy stops before it."""


class Sink(Protocol):
    """Where a feed applies its stream: a SQLite file with the feed's state beside its rows."""

    def state(self) -> dict[str, str]:
        """The state as last committed (by any process sharing the file)."""

    def clear(self, state: dict[str, str]) -> None:
        """Empty it, its state replaced by ``state``, in one transaction."""

    def apply(self, msgs: Sequence[Msg], state: dict[str, str]) -> None:
        """One batch, in stream order, and ``state`` in one transaction. Raises
        ``LogOutOfOrderError`` when the batch does not follow what is applied (the feed then
        starts again from the state), ``BadLeafError`` for a message the log copy cannot hold."""


class IndexSink:
    """The runs bucket's stream into the ``list`` index: each key's latest value of a batch."""

    def __init__(self, index: RunIndex, key_prefix: str) -> None:
        self._index = index
        self._prefix = key_prefix  # "$KV.<bucket>."

    def state(self) -> dict[str, str]:
        return self._index.state()

    def clear(self, state: dict[str, str]) -> None:
        self._index.clear(state)

    def apply(self, msgs: Sequence[Msg], state: dict[str, str]) -> None:
        latest: dict[str, dict[str, Any] | None] = {}
        for msg in msgs:
            run_id = msg.subject.removeprefix(self._prefix)
            operation = (msg.headers or {}).get(KV_OPERATION)
            latest[run_id] = None if operation in {"DEL", "PURGE"} else json.loads(msg.data)
        self._index.apply(
            (a for a in latest.values() if a is not None),
            [run_id for run_id, a in latest.items() if a is None],
            state,
        )


class LogSink:
    """The log stream into this host's copy of the Merkle log. The stream holds only leaves, so
    the message at sequence ``s`` is the leaf at position ``s - 1``, and the copy's size is the
    sequence it applied."""

    def __init__(self, merkle_log: MerkleLog) -> None:
        self._log = merkle_log

    def state(self) -> dict[str, str]:
        """The copy's state; its applied sequence is its size (whoever appended last)."""
        state = self._log.state()
        if "stream_created" in state:
            state["applied_seq"] = str(self._log.size())
        return state

    def clear(self, state: dict[str, str]) -> None:
        self._log.clear(state)

    def apply(self, msgs: Sequence[Msg], state: dict[str, str]) -> None:
        first = msgs[0].metadata.sequence.stream - 1
        for offset, msg in enumerate(msgs):
            if msg.metadata.sequence.stream != first + 1 + offset:
                raise LogOutOfOrderError(
                    f"the log stream skips from {first + offset} to {msg.metadata.sequence.stream}"
                )
        try:
            records = [_leaf(msg.data) for msg in msgs]
            self._log.apply(first, records, state)
        except (ValueError, sqlite3.IntegrityError) as exc:
            last = msgs[-1].metadata.sequence.stream
            raise BadLeafError(f"a message of {first + 1}..{last} is no leaf: {exc!r}") from exc


def _leaf(data: bytes) -> dict[str, Any]:
    """A leaf record as the copy holds one (a run id and a revision); ValueError else."""
    record = json.loads(data)
    if not (
        isinstance(record, dict)
        and isinstance(record.get("run_id"), str)
        and isinstance(record.get("revision"), int)
    ):
        raise ValueError("not a leaf record")
    return record


class Feed:
    """One stream followed into one sink: ``follow`` applies it, readers ask ``position``."""

    def __init__(
        self,
        js_of: Callable[[], JetStreamContext],
        stream: str,
        subject: str,
        sink: Sink,
        *,
        name: str,
        measured: bool = False,
    ) -> None:
        self._js_of = js_of  # the worker's connection, for readers
        self.stream = stream
        self.subject = subject  # the consumer's filter: every subject of the stream
        self.sink = sink
        self.name = name  # in log lines: "list index", "log copy"
        self._measured = measured  # exports rmos_projection_lag_* (the list index's)
        self._following = False  # this process follows, and knows where the sink stands
        self._applied = 0
        self._rebuild_until = 0

    # -- readers (any process of the data dir) ---------------------------------------------

    def position(self) -> tuple[int, int] | None:
        """(applied sequence, sequence a rebuild must reach before ``list`` may answer); None
        while the sink is of no stream yet (a new data dir before the follower's first look)."""
        if self._following:
            return self._applied, self._rebuild_until
        state = self.sink.state()
        if "stream_created" not in state:
            return None
        return int(state["applied_seq"]), int(state.get("rebuild_until", 0))

    async def wait_applied(self, seq: int, timeout: float) -> int:
        """Return once the sink holds every change up to ``seq`` (bounded by ``timeout``);
        returns ``seq``, or the stream's last sequence when it is below (the stream was made
        anew since ``seq`` was written: that write is gone with the old stream).

        Raises ``UnavailableError`` while rebuilding, or when the sink stays behind."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        replaced_checked = False
        while True:
            position = await asyncio.to_thread(self.position)
            if position is None:
                raise UnavailableError(f"the {self.name} is being built")
            applied, rebuild_until = position
            if applied < rebuild_until:
                raise UnavailableError(
                    f"the {self.name} is rebuilding ({applied} of {rebuild_until} changes applied)"
                )
            if applied >= seq:
                return seq
            if not replaced_checked and loop.time() >= deadline - timeout / 2:
                replaced_checked = True
                last = await self._last_seq()
                if last is not None and last < seq:
                    seq = last
                    continue
            if loop.time() >= deadline:
                raise UnavailableError(
                    f"the {self.name} is behind (at {applied}, this worker wrote {seq})"
                )
            await asyncio.sleep(0.01)

    async def _last_seq(self) -> int | None:
        try:
            return (await self._js_of().stream_info(self.stream)).state.last_seq
        except (nats.errors.Error, TimeoutError):
            return None

    # -- the follower ------------------------------------------------------------------------

    async def follow(
        self,
        js: JetStreamContext,
        halt: threading.Event,
        *,
        until: int | None = None,
        offload: bool = False,
    ) -> None:
        """One consumer's life: from the applied sequence until stopped, the stream is
        replaced, or a gap is seen (then the caller starts again from the sink's state); with
        ``until``, also once that sequence is applied (a catch-up). ``offload`` applies in a
        thread, for a loop that is not the follower's own."""
        created = await self._check_stream(js)
        if until is not None and self._applied >= until:
            return
        config = ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self._applied + 1,
            inactive_threshold=60.0,
            mem_storage=True,
            num_replicas=1,
        )
        sub = await js.pull_subscribe(self.subject, stream=self.stream, config=config)
        loop = asyncio.get_running_loop()
        checked = heard = loop.time()
        delivered = 0  # the consumer's sequence: consecutive, or something was lost
        try:
            while not halt.is_set():
                msgs = await _fetch(sub)
                if msgs:
                    if msgs[0].metadata.sequence.consumer != delivered + 1:
                        return  # a gap (the consumer was recreated by the server): start again
                    delivered = msgs[-1].metadata.sequence.consumer
                    heard = loop.time()
                    await self._take(msgs, offload)
                    if until is not None and self._applied >= until:
                        return
                elif until is not None and loop.time() - heard >= STALL_S:
                    raise TimeoutError(f"{self.stream} delivered nothing for {STALL_S:.0f} s")
                elif self._measured:
                    PROJECTION_LAG.set(value=0)
                    PROJECTION_LAG_SECONDS.set(value=0)
                if loop.time() - checked >= CHECK_EVERY_S:
                    checked = loop.time()
                    if await self._created(js) != created:
                        return
        finally:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await sub.unsubscribe()
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await js.delete_consumer(self.stream, config.name or "")

    def unfollowed(self) -> None:
        """This process follows no more: readers read the sink's state again."""
        self._following = False

    async def _created(self, js: JetStreamContext) -> str:
        info = await js.stream_info(self.stream)
        assert info.created is not None, "JetStream reports a stream's creation time"
        return info.created.isoformat()

    async def _check_stream(self, js: JetStreamContext) -> str:
        """The stream's creation time; a new stream (or sink) empties the sink first."""
        info = await js.stream_info(self.stream)
        assert info.created is not None
        created = info.created.isoformat()
        state = self.sink.state()
        if state.get("stream_created") != created:
            last = info.state.last_seq
            log.log(
                logging.WARNING if state.get("stream_created") else logging.INFO,
                "%s is not of stream %s created %s: building it (%d messages)",
                self.name, self.stream, created, last,
            )  # fmt: skip
            fresh = {"stream_created": created, "applied_seq": "0", "rebuild_until": str(last)}
            self.sink.clear(fresh)
            state = fresh
        self._applied = int(state["applied_seq"])
        self._rebuild_until = int(state.get("rebuild_until", 0))
        self._following = True
        return created

    async def _take(self, msgs: list[Msg], offload: bool) -> None:
        if offload:
            await asyncio.to_thread(self._apply, msgs)
        else:
            self._apply(msgs)  # the follower's loop is its own: block it

    def _apply(self, msgs: list[Msg]) -> None:
        """One batch, in stream order, in one transaction with its last sequence."""
        last = msgs[-1].metadata
        self.sink.apply(msgs, {"applied_seq": str(last.sequence.stream)})
        self._applied = last.sequence.stream
        if self._measured:
            PROJECTION_LAG.set(value=last.num_pending)
            # The batch's oldest change waited longest: its age is this batch's lag.
            age = (datetime.now(UTC) - msgs[0].metadata.timestamp).total_seconds()
            PROJECTION_LAG_SECONDS.set(value=max(age, 0.0))


class Projection:
    """The follower of one data dir: ``run`` follows the ``list`` index's feed and every other
    feed; ``position`` and ``wait_applied`` are the index's (what health and ``list`` ask)."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[Client]],
        lock_path: Path,
        index: Feed,
        others: Sequence[Feed] = (),
    ) -> None:
        self._connect = connect  # a connection of the follower's own, in its thread
        self._lock_path = lock_path
        self._lock_fd: int | None = None
        self.index = index
        self.feeds = [index, *others]

    def position(self) -> tuple[int, int] | None:
        """The ``list`` index's position (``Feed.position``)."""
        return self.index.position()

    async def wait_applied(self, seq: int, timeout: float) -> int:
        """Wait for the ``list`` index (``Feed.wait_applied``)."""
        return await self.index.wait_applied(seq, timeout)

    async def run(self, stopping: asyncio.Event) -> None:
        """Follow every feed while this process holds the lock; until ``stopping`` is set.

        The follower runs in a thread of its own, with its own event loop and connection: on
        the worker's loop, busy with ingest, it got one message a turn against hundreds of
        ingest callbacks and fell seconds behind under a flood (bench/store_bench.py)."""
        halt = threading.Event()
        follower = asyncio.ensure_future(asyncio.to_thread(asyncio.run, self._run(halt)))
        stop = asyncio.ensure_future(stopping.wait())
        try:
            await asyncio.wait({follower, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            halt.set()
            stop.cancel()
            await follower

    async def _run(self, halt: threading.Event) -> None:
        nc: Client | None = None
        failing = False
        try:
            while not halt.is_set():
                if self._lock_fd is None and not self._take_lock():
                    await _pause(halt, RETRY_S)  # another process of this data dir follows
                    continue
                try:
                    if nc is None:
                        nc = await self._connect()
                except (nats.errors.Error, TimeoutError, OSError) as exc:
                    if not failing:
                        log.warning("projection cannot connect (%r); retrying", exc)
                    failing = True
                    await _pause(halt, RETRY_S)
                    continue
                js = nc.jetstream()
                await asyncio.gather(*(self._keep(feed, js, halt) for feed in self.feeds))
        finally:
            for feed in self.feeds:
                feed.unfollowed()
            if nc is not None:
                with contextlib.suppress(nats.errors.Error, TimeoutError):
                    await nc.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    async def _keep(self, feed: Feed, js: JetStreamContext, halt: threading.Event) -> None:
        """Follow one feed until halted, starting again after each interruption. A leaf the
        copy cannot hold stops the copy there (said once), not the worker."""
        failing = False
        while not halt.is_set():
            try:
                await feed.follow(js, halt)
                failing = False
            except LogOutOfOrderError as exc:  # lost its place: start again from its state
                log.warning("%s out of order (%s); resuming from its state", feed.name, exc)
                await _pause(halt, RETRY_S)
            except BadLeafError as exc:
                if not failing:
                    log.error("%s stopped: %s (tampering? run rmos-runs audit)", feed.name, exc)
                failing = True
                await _pause(halt, BAD_LEAF_RETRY_S)
            except (nats.errors.Error, TimeoutError, OSError) as exc:
                if not failing:
                    log.warning("%s projection interrupted (%r); resuming", feed.name, exc)
                failing = True
                await _pause(halt, RETRY_S)

    def _take_lock(self) -> bool:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True


async def _fetch(sub: JetStreamContext.PullSubscription) -> list[Msg]:
    """The next batch; [] after an idle wait."""
    try:
        return await sub.fetch(BATCH, timeout=FETCH_WAIT_S)
    except TimeoutError:
        return []


async def _pause(halt: threading.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less once ``halt`` is set."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not halt.is_set() and loop.time() < deadline:  # noqa: ASYNC110 (a threading.Event)
        await asyncio.sleep(0.05)
