"""The events consumer: pull a batch, ingest it with one group commit, then settle each message.

A stored run (new or duplicate) is acked once the batch is durable and its due explanation
request is published; while the store is down as a whole the batch is held and kept alive, the
same write retried until the store works (``worker.outage``), no delivery spent; every other
outcome is settled by the delivery policy (``worker.delivery``: dead letter, hand back, retry).

The pull loop is our own rather than FastStream's batch ``PullSub``: that one waits until a batch
is full or its timeout passes, so a lone event either waits the whole timeout or the consumer polls
the server at 1/timeout when idle. Here a fetch of 1 blocks until an event exists, and the batch
is topped up while events keep arriving (``batch_linger_s`` apart), so an idle worker costs
nothing and a lone event is durable within a few milliseconds. Batches are pipelined: the next
one is checked and built while the previous one commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from contracts.subjects import EVENTS_CONSUMER
from worker import tracing
from worker.delivery import (
    Action,
    DeadLetters,
    FetchFailures,
    in_turn,
    settle_failure,
    together,
)
from worker.errors import RejectedError, StoreOutageError
from worker.explanations import Explanations
from worker.intake import Delivery, Intake, Prepared, Stored
from worker.logs import fields
from worker.metrics import (
    ACK_LATENCY,
    BATCH_SIZE,
    EVENTS_DEAD_LETTERED,
    EVENTS_DUPLICATE,
    EVENTS_RETRIED,
    EVENTS_STORED,
    GROUP_COMMIT_SECONDS,
    GROUP_COMMITS,
    value,
)
from worker.outage import Outage
from worker.settings import Settings

log = logging.getLogger(__name__)


class EventConsumer:
    """Runs the pull loop of the durable consumer on ``events.>`` until :meth:`stop`."""

    def __init__(
        self,
        js: JetStreamContext,
        intake: Intake,
        dead_letters: DeadLetters,
        explanations: Explanations,
        settings: Settings,
        outage: Outage,
    ) -> None:
        self._js = js
        self._intake = intake
        self._explanations = explanations
        self._dead_letters = dead_letters
        self._settings = settings
        self._outage = outage
        self._fetch_failures = FetchFailures("events")
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        """Fetch, prepare and commit in a pipeline: batch N+1 is checked and built while batch
        N commits (its file and index work runs in a thread, mostly in the kernel). Commits stay
        in stream order, one at a time."""
        sub = await self._js.pull_subscribe_bind(
            durable=EVENTS_CONSUMER, stream=self._settings.subjects.events_stream
        )
        committing: asyncio.Task[None] | None = None
        try:
            while not self._stopping.is_set():
                await self._outage.passable(self._stopping)  # fetch nothing while it is down
                msgs = await self._next_batch(sub)
                if msgs and self._stopping.is_set():  # hand back at once, for another worker
                    await together(m.nak() for m in msgs)
                elif msgs:
                    self._outage.hold(msgs)  # until settled
                    steps = Steps(time.time_ns(), size=len(msgs))
                    prepared = await self._prepare(msgs, committing, steps)
                    if committing is not None:
                        await committing
                    committing = None
                    if prepared is not None:
                        committing = asyncio.create_task(self._commit(msgs, prepared, steps))
        finally:
            if committing is not None:
                await committing
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
            log.info(
                "events consumer stopped: %d stored, %d duplicates, %d dead-lettered, "
                "%d to retry, in %d group commits",
                *map(value, (EVENTS_STORED, EVENTS_DUPLICATE, EVENTS_DEAD_LETTERED)),
                *map(value, (EVENTS_RETRIED, GROUP_COMMITS)),
            )

    def stop(self) -> None:
        """Stop fetching; the batches in hand are finished first."""
        self._stopping.set()

    async def _next_batch(self, sub: JetStreamContext.PullSubscription) -> list[Msg]:
        """Block until one event is there, then take more while they keep coming: the batch
        ends when it is full or no event arrives within ``batch_linger_s``."""
        msgs = await self._fetch_failures.fetch(sub, 1)
        if not msgs:
            return []
        linger = max(self._settings.batch_linger_s, 0.001)
        while len(msgs) < self._settings.batch_size:  # each round adds one or more, or ends
            try:
                more = await sub.fetch(self._settings.batch_size - len(msgs), timeout=linger)
            except (TimeoutError, nats.errors.Error):  # a pause in the stream: go with these
                break
            if not more:  # a pull ended by a status (408, 409) without a message: a pause too
                break
            msgs += more
        return msgs

    async def _prepare(
        self, msgs: Sequence[Msg], committing: asyncio.Task[None] | None, steps: Steps
    ) -> Prepared | None:
        """The prepared batch; None when it failed and was handled the careful way instead."""
        try:
            return await self._prepared(msgs, steps)
        except Exception as exc:
            failure = exc
        if committing is not None:  # keep commits in stream order
            await committing
        try:
            if isinstance(failure, StoreOutageError):  # stopping while the store is down
                await self._hand_back(msgs, failure)
            else:
                await self._isolate(msgs, failure)
        finally:
            self._outage.release(msgs)
        return None

    async def _prepared(self, msgs: Sequence[Msg], steps: Steps) -> Prepared:
        deliveries = _deliveries(msgs)
        started = time.time_ns()
        prepared = await self._outage.persist(
            lambda: self._intake.prepare(deliveries), self._stopping, write=False
        )
        steps.checked = (started, time.time_ns())
        return prepared

    async def handle(self, msgs: Sequence[Msg]) -> None:
        """Ingest and settle one batch, unpipelined. Never raises: every message is settled."""
        steps = Steps(time.time_ns(), size=len(msgs))
        try:
            prepared = await self._prepared(msgs, steps)
        except StoreOutageError as outage:
            await self._hand_back(msgs, outage)
            return
        except Exception as exc:
            await self._isolate(msgs, exc)
            return
        await self._commit(msgs, prepared, steps)

    async def _hand_back(self, msgs: Sequence[Msg], outage: StoreOutageError) -> None:
        """Stopping while the store is down: handed back at once, for whoever runs next."""
        log.warning("stopping during a store outage: %d events handed back", len(msgs))
        await together(settle_failure(m, outage, self._dead_letters) for m in msgs)

    async def _isolate(self, msgs: Sequence[Msg], exc: Exception) -> None:
        """A batch that could not be prepared: one by one, so one bad event cannot sink the
        rest; a single event is retried (then dead-lettered MAX_DELIVERIES)."""
        if len(msgs) > 1:
            log.error("batch of %d failed; retrying one by one", len(msgs), exc_info=exc)
            for m in msgs:
                await self.handle([m])
            return
        seq = msgs[0].metadata.sequence.stream
        log.error("event at stream seq %s failed", seq, exc_info=exc, extra=fields(stream_seq=seq))
        EVENTS_RETRIED.inc()
        await settle_failure(msgs[0], exc, self._dead_letters)

    async def _commit(self, msgs: Sequence[Msg], prepared: Prepared, steps: Steps) -> None:
        try:
            await self._committed(msgs, prepared, steps)
        finally:
            self._outage.release(msgs)

    async def _committed(self, msgs: Sequence[Msg], prepared: Prepared, steps: Steps) -> None:
        async def commit() -> list[Stored | RejectedError]:
            started = time.perf_counter()
            started_ns = time.time_ns()
            outcomes = await self._intake.commit(prepared)
            GROUP_COMMIT_SECONDS.observe(time.perf_counter() - started)
            steps.stored = (started_ns, time.time_ns())
            return outcomes

        try:
            outcomes = await self._outage.persist(commit, self._stopping)
        except StoreOutageError as outage:  # stopping while the store is down
            self._intake.discard(prepared)
            await self._hand_back(msgs, outage)
            return
        except Exception as exc:  # TransientError, or anything the store did not expect
            log.warning("batch of %d not stored: %s", len(msgs), exc)
            EVENTS_RETRIED.inc(len(msgs))
            await together(settle_failure(m, exc, self._dead_letters) for m in msgs)
            return
        GROUP_COMMITS.inc()
        BATCH_SIZE.observe(len(msgs))
        settling = list(zip(msgs, outcomes, strict=True))
        await in_turn(self._settle(m, o, steps) for m, o in settling if _ack_only(o))
        await together(self._settle(m, o, steps) for m, o in settling if not _ack_only(o))

    async def _settle(self, msg: Msg, outcome: Stored | RejectedError, steps: Steps) -> None:
        """Settle one event, in its producer's trace: a span from the fetch to the ack, with the
        batch's checking and durable write as children (the explanation request is sent inside,
        so it carries the trace on)."""
        if not tracing.wanted(msg.headers):  # no span would record or carry anything
            await self._settled(msg, outcome)
            return
        run_id = outcome.run_id if isinstance(outcome, Stored) else ""
        attributes: dict[str, str | int] = {
            "rmos.run_id": run_id,
            "rmos.stream_seq": msg.metadata.sequence.stream,
        }
        with tracing.continued(
            msg.headers, "rmos.ingest", start_ns=steps.fetched, attributes=attributes
        ):
            tracing.record("rmos.validate", *steps.checked, {"rmos.batch": steps.size})
            tracing.record("rmos.store", *steps.stored, {"rmos.batch": steps.size})
            await self._settled(msg, outcome)

    async def _settled(self, msg: Msg, outcome: Stored | RejectedError) -> None:
        seq = msg.metadata.sequence.stream
        if isinstance(outcome, Stored):  # its explanation request goes out before the ack
            try:
                await self._explanations.announce_created(outcome.run)
                await msg.ack()
            except Exception as exc:
                log.warning("publish for seq %s failed: %s", seq, exc, extra=fields(stream_seq=seq))
                EVENTS_RETRIED.inc()
                await settle_failure(msg, exc, self._dead_letters)
                return
            (EVENTS_DUPLICATE if outcome.duplicate else EVENTS_STORED).inc()
            # From when JetStream stored it (the server's clock) to its ack, once durable.
            ACK_LATENCY.observe(max(time.time() - msg.metadata.timestamp.timestamp(), 0.0))
            return
        if await settle_failure(msg, outcome, self._dead_letters) is not Action.DEAD_LETTER:
            EVENTS_RETRIED.inc()
            return
        log.info(
            "dead-lettered seq %s: %s",
            seq,
            outcome,
            extra=fields(stream_seq=seq, code=outcome.code),
        )
        EVENTS_DEAD_LETTERED.inc()


@dataclass(slots=True)
class Steps:
    """When a batch was fetched, checked and made durable (epoch ns), for its events' spans."""

    fetched: int
    checked: tuple[int, int] = (0, 0)
    stored: tuple[int, int] = (0, 0)
    size: int = 0


def _ack_only(outcome: Stored | RejectedError) -> bool:
    """Settled by an ack alone, which only buffers a publish (no explanation request due, no
    dead letter): such settlements go one after the other, with no task each."""
    return isinstance(outcome, Stored) and outcome.run["explanation_status"] != "PENDING"


def _deliveries(msgs: Sequence[Msg]) -> list[Delivery]:
    return [Delivery(m.data, m.subject.rpartition(".")[2], m.metadata.timestamp) for m in msgs]
