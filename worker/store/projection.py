"""The ``list`` index of a JetStream store: a per-host projection of the runs bucket's stream.

The bucket is the source of truth; the SQLite index (``RunIndex``) under the data dir is what
this host has applied of it. One process per data dir (an ``flock`` on ``projection.lock``)
follows the bucket's stream with an ephemeral pull consumer from the last applied sequence and
applies each batch, with that sequence, in one SQLite transaction: a crash keeps a batch whole or
not at all, and the follower resumes where the index stands. Other processes sharing the data dir
read the same file and its state. The follower has a thread, an event loop and a NATS connection
of its own, so that a worker busy ingesting does not starve it.

The state keeps the stream's creation time: a bucket that was deleted and recreated has another,
and the index is emptied and rebuilt from the new stream's first message (an index left by an
earlier bucket would otherwise resume at a sequence that means nothing now). While a rebuild is
below the stream's last sequence at its start, ``list`` answers ``UNAVAILABLE``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from worker.errors import UnavailableError
from worker.metrics import PROJECTION_LAG, PROJECTION_LAG_SECONDS
from worker.store.index import RunIndex

log = logging.getLogger(__name__)
BATCH = 500
FETCH_WAIT_S = 0.25  # one idle fetch; also how soon a stop is noticed
CHECK_EVERY_S = 2.0  # how often an idle follower checks that its bucket is the same stream
RETRY_S = 1.0
KV_OPERATION = "KV-Operation"


class Projection:
    """Follows one KV stream into one index; ``run`` until stopped, ``wait_applied`` to read."""

    def __init__(
        self,
        js_of: Callable[[], JetStreamContext],
        connect: Callable[[], Awaitable[Client]],
        stream: str,
        key_prefix: str,
        index: RunIndex,
        lock_path: Path,
    ) -> None:
        self._js_of = js_of  # the worker's connection, for readers
        self._connect = connect  # a connection of the follower's own, in its thread
        self._stream = stream
        self._prefix = key_prefix  # "$KV.<bucket>."
        self._index = index
        self._lock_path = lock_path
        self._lock_fd: int | None = None
        self._following = False  # this process follows, and knows where the index stands
        self._applied = 0
        self._rebuild_until = 0

    # -- readers (any process of the data dir) ---------------------------------------------

    def position(self) -> tuple[int, int] | None:
        """(applied sequence, sequence a rebuild must reach before ``list`` may answer); None
        while the index is of no stream yet (a new data dir before the follower's first look)."""
        if self._following:
            return self._applied, self._rebuild_until
        state = self._index.state()
        if "stream_created" not in state:
            return None
        return int(state["applied_seq"]), int(state.get("rebuild_until", 0))

    async def wait_applied(self, seq: int, timeout: float) -> int:
        """Return once the index holds every change up to ``seq`` (bounded by ``timeout``);
        returns ``seq``, or the stream's last sequence when it is below (the bucket was made
        anew since ``seq`` was written: that write is gone with the old stream).

        Raises ``UnavailableError`` while rebuilding, or when the index stays behind."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        replaced_checked = False
        while True:
            position = await asyncio.to_thread(self.position)
            if position is None:
                raise UnavailableError("the list index is being built")
            applied, rebuild_until = position
            if applied < rebuild_until:
                raise UnavailableError(
                    f"the list index is rebuilding ({applied} of {rebuild_until} changes applied)"
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
                    f"the list index is behind (at {applied}, this worker wrote {seq})"
                )
            await asyncio.sleep(0.01)

    async def _last_seq(self) -> int | None:
        try:
            return (await self._js_of().stream_info(self._stream)).state.last_seq
        except (nats.errors.Error, TimeoutError):
            return None

    # -- the follower (one process of the data dir) ------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        """Follow the stream while this process holds the lock; until ``stopping`` is set.

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
                    await self._follow(nc.jetstream(), halt)
                    failing = False
                except (nats.errors.Error, TimeoutError, OSError) as exc:
                    if not failing:
                        log.warning("list projection interrupted (%r); resuming", exc)
                    failing = True
                    await _pause(halt, RETRY_S)
        finally:
            self._following = False
            if nc is not None:
                with contextlib.suppress(nats.errors.Error, TimeoutError):
                    await nc.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def _take_lock(self) -> bool:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    async def _follow(self, js: JetStreamContext, halt: threading.Event) -> None:
        """One consumer's life: from the applied sequence until stopped, the stream is
        replaced, or a gap is seen (then the caller starts again from the index's state)."""
        created = await self._check_stream(js)
        config = ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self._applied + 1,
            inactive_threshold=60.0,
            mem_storage=True,
            num_replicas=1,
        )
        sub = await js.pull_subscribe(f"{self._prefix}>", stream=self._stream, config=config)
        loop = asyncio.get_running_loop()
        checked = loop.time()
        delivered = 0  # the consumer's sequence: consecutive, or something was lost
        try:
            while not halt.is_set():
                try:
                    msgs = await sub.fetch(BATCH, timeout=FETCH_WAIT_S)
                except TimeoutError:
                    msgs = []
                if msgs:
                    if msgs[0].metadata.sequence.consumer != delivered + 1:
                        return  # a gap (the consumer was recreated by the server): start again
                    delivered = msgs[-1].metadata.sequence.consumer
                    self._apply(msgs)  # this loop is the follower's alone: block it
                else:
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
                await js.delete_consumer(self._stream, config.name or "")

    async def _created(self, js: JetStreamContext) -> str:
        info = await js.stream_info(self._stream)
        assert info.created is not None, "JetStream reports a stream's creation time"
        return info.created.isoformat()

    async def _check_stream(self, js: JetStreamContext) -> str:
        """The stream's creation time; a new stream (or index) empties the index first."""
        info = await js.stream_info(self._stream)
        assert info.created is not None
        created = info.created.isoformat()
        state = self._index.state()
        if state.get("stream_created") != created:
            last = info.state.last_seq
            log.log(
                logging.WARNING if state.get("stream_created") else logging.INFO,
                "list index is not of bucket stream %s created %s: building it (%d changes)",
                self._stream, created, last,
            )  # fmt: skip
            fresh = {"stream_created": created, "applied_seq": "0", "rebuild_until": str(last)}
            self._index.clear(fresh)
            state = fresh
        self._applied = int(state["applied_seq"])
        self._rebuild_until = int(state.get("rebuild_until", 0))
        self._following = True
        return created

    def _apply(self, msgs: list[Msg]) -> None:
        """One batch, in stream order, in one transaction with its last sequence."""
        latest: dict[str, dict[str, Any] | None] = {}
        for msg in msgs:
            run_id = msg.subject.removeprefix(self._prefix)
            operation = (msg.headers or {}).get(KV_OPERATION)
            latest[run_id] = None if operation in {"DEL", "PURGE"} else json.loads(msg.data)
        last = msgs[-1].metadata
        self._index.apply(
            (a for a in latest.values() if a is not None),
            [run_id for run_id, a in latest.items() if a is None],
            {"applied_seq": str(last.sequence.stream)},
        )
        self._applied = last.sequence.stream
        PROJECTION_LAG.set(value=last.num_pending)
        # The batch's oldest change waited longest: its age is this batch's lag.
        age = (datetime.now(UTC) - msgs[0].metadata.timestamp).total_seconds()
        PROJECTION_LAG_SECONDS.set(value=max(age, 0.0))


async def _pause(halt: threading.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less once ``halt`` is set."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not halt.is_set() and loop.time() < deadline:  # noqa: ASYNC110 (a threading.Event)
        await asyncio.sleep(0.05)
