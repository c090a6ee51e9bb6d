"""How a message delivered by JetStream is settled: the one delivery policy of the events
consumer, the patches consumer and the API (which answers instead of settling), and the
dead-letter publisher they share.

A failure's :class:`Action` depends only on what failed (:func:`action_for`):

    RejectedError       DEAD_LETTER  the message can never be accepted: a dead letter with its
                                     code (awaiting its PubAck), then term; the API answers
                                     that code (``create``: what the stream would dead-letter)
    StoreOutageError    HAND_BACK    the store is down as a whole and we are stopping (until
                                     then ``worker.outage`` holds the message): nak at once, for
                                     whoever runs next; the API answers UNAVAILABLE, retryable
    anything else       RETRY        may pass: nak with a delay growing with the delivery count,
                                     on the last allowed delivery a dead letter MAX_DELIVERIES;
                                     the API answers UNAVAILABLE, retryable, for a
                                     TransientError and INTERNAL (logged) for anything else

A dead letter that cannot be stored turns DEAD_LETTER into RETRY: nothing is termed unrecorded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from enum import Enum
from typing import Any

import nats.errors
from faststream.nats import NatsBroker
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from contracts.codes import ApiErrorCode, DeadLetterCode
from contracts.subjects import EVENTS_CONSUMER
from worker.core.dead_letter import dead_letter, dead_letter_msg_id
from worker.core.timefmt import utc_now
from worker.errors import RejectedError, StoreOutageError, TransientError
from worker.logs import fields
from worker.metrics import DEAD_LETTERS
from worker.settings import Settings

log = logging.getLogger(__name__)
IDLE_FETCH_S = 1.0  # how long one idle fetch waits; also bounds how long stop() waits for it
FETCH_RETRY_S = 0.5  # after a fetch that failed (not one that found nothing)


class Action(Enum):
    """What is done with a message whose handling failed."""

    DEAD_LETTER = "dead letter, then term"
    HAND_BACK = "nak at once"
    RETRY = "nak with back-off; MAX_DELIVERIES dead letter on the last delivery"


def action_for(failure: BaseException) -> Action:
    """The delivery policy: what a failure means for its message (see the module)."""
    if isinstance(failure, RejectedError):
        return Action.DEAD_LETTER
    if isinstance(failure, StoreOutageError):
        return Action.HAND_BACK
    return Action.RETRY


def reply_for(failure: BaseException) -> tuple[str, str, bool] | None:
    """The same policy for a request-reply caller (``create`` and every other API operation):
    (code, message, retryable), or None for a failure that is a bug (INTERNAL)."""
    action = action_for(failure)
    if isinstance(failure, RejectedError):  # what it would be dead-lettered with
        return failure.code, failure.detail, False
    if action is Action.HAND_BACK:
        return ApiErrorCode.UNAVAILABLE, f"store down: {failure}; try again", True
    if isinstance(failure, TransientError):
        return ApiErrorCode.UNAVAILABLE, f"{failure}; try again", True
    return None


async def settle_failure(msg: Msg, failure: BaseException, dead_letters: DeadLetters) -> Action:
    """Settle ``msg`` as :func:`action_for` says; returns what was done. Never raises: a
    settlement that cannot be sent leaves the message to come back after ``ack_wait``."""
    action = action_for(failure)
    seq = msg.metadata.sequence.stream
    if isinstance(failure, RejectedError):
        try:
            await dead_letters.send_for(msg, failure.code, failure.detail)
        except Exception as exc:  # never termed unrecorded: retried instead
            log.warning(
                "dead letter for seq %s not stored: %r", seq, exc, extra=fields(stream_seq=seq)
            )
            await _settled(seq, dead_letters.retry(msg, exc))
            return Action.RETRY
        try:
            await msg.term()
        except Exception as exc:  # the next delivery's letter has the same id: stored once
            log.warning("seq %s dead-lettered, its term failed; retried: %r", seq, exc)
            await _settled(seq, dead_letters.retry(msg, exc))
            return Action.RETRY
    elif action is Action.HAND_BACK:
        await _settled(seq, msg.nak())
    else:
        await _settled(seq, dead_letters.retry(msg, failure))
    return action


async def _settled(seq: int, settlement: Awaitable[None]) -> None:
    try:
        await settlement
    except Exception as exc:
        log.warning("seq %s could not be settled; it comes back: %r", seq, exc)


class DeadLetters:
    """Publishes dead letters with JetStream; returns once the DLQ stream has stored them."""

    def __init__(
        self, broker: NatsBroker, settings: Settings, clock: Callable[[], datetime] = utc_now
    ) -> None:
        self._broker = broker
        self._settings = settings
        self._subjects = settings.subjects
        self._timeout = settings.publish_timeout_s
        self._clock = clock

    async def send(
        self,
        *,
        code: str,
        detail: str,
        subject: str,
        headers: dict[str, str],
        payload: bytes,
        stream: str,
        stream_seq: int | None,
        deliveries: int | None,
    ) -> None:
        letter = dead_letter(
            code=code,
            detail=detail,
            subject=subject,
            headers=headers,
            payload=payload,
            stream_seq=stream_seq,
            deliveries=deliveries,
            now=self._clock(),
        )
        await self._broker.publish(
            letter.model_dump_json(by_alias=True).encode(),
            self._subjects.dead_letter(code),
            headers={
                "Nats-Msg-Id": dead_letter_msg_id(stream, stream_seq, payload),
                "content-type": "application/json",
            },
            stream=self._subjects.dlq_stream,
            timeout=self._timeout,
        )
        DEAD_LETTERS.labels(code).inc()

    async def retry(self, msg: Msg, exc: BaseException) -> None:
        """Nak with a growing delay; on the last allowed delivery, dead-letter instead."""
        delivered = msg.metadata.num_delivered
        if delivered >= self._settings.max_deliver:
            detail = f"failed on all {delivered} deliveries; last error: {exc!r}"
            try:
                await self.send_for(msg, DeadLetterCode.MAX_DELIVERIES, detail)
            except Exception:
                log.exception(
                    "MAX_DELIVERIES dead letter not stored; the advisory will retry it",
                    extra=fields(stream_seq=msg.metadata.sequence.stream),
                )
                return
            await msg.term()
            return
        await msg.nak(delay=nak_delay(delivered, self._settings))

    async def send_for(self, msg: Msg, code: str, detail: str) -> None:
        """Dead-letter a message delivered by JetStream."""
        meta = msg.metadata
        await self.send(
            code=code,
            detail=detail,
            subject=msg.subject,
            headers=dict(msg.headers or {}),
            payload=msg.data,
            stream=meta.stream,
            stream_seq=meta.sequence.stream,
            deliveries=meta.num_delivered,
        )


class FetchFailures:
    """Fetches failing in a row (NATS reconnecting, a consumer without a leader): the first is
    a warning, the others debug lines, and the next fetch that works says so once."""

    def __init__(self, consumer: str) -> None:
        self._consumer = consumer
        self._count = 0

    async def failed(self, exc: Exception) -> None:
        level = logging.WARNING if self._count == 0 else logging.DEBUG
        log.log(
            level, "%s fetch failed (%s); retrying every %s s", self._consumer, exc, FETCH_RETRY_S
        )
        self._count += 1
        await asyncio.sleep(FETCH_RETRY_S)

    async def fetch(
        self, sub: JetStreamContext.PullSubscription, batch: int, timeout: float = IDLE_FETCH_S
    ) -> list[Msg]:
        """One pull of up to ``batch``: [] when nothing came within ``timeout``, or when it
        failed (said as above, after a pause so that a broken connection is not spun on)."""
        try:
            msgs = await sub.fetch(batch, timeout=timeout)
        except TimeoutError:  # nats-py raises both its own and asyncio's
            return []
        except nats.errors.Error as exc:  # disconnected, reconnecting, no leader
            await self.failed(exc)
            return []
        self.worked()
        return msgs

    def worked(self) -> None:
        if self._count:
            log.info("%s fetch works again, after %d failures", self._consumer, self._count)
            self._count = 0


async def together(settlements: Iterable[Awaitable[object]]) -> None:
    """Send acks, naks and terms concurrently; one that fails is redelivered after ack_wait."""
    for outcome in await asyncio.gather(*settlements, return_exceptions=True):
        if isinstance(outcome, BaseException):
            _unsettled(outcome)


async def in_turn(settlements: Iterable[Awaitable[object]]) -> None:
    """As :func:`together`, one after the other and without a task each: for settlements that
    do not wait for the server."""
    for settlement in settlements:
        try:
            await settlement
        except Exception as exc:
            _unsettled(exc)


def _unsettled(exc: BaseException) -> None:
    log.warning("a message could not be settled and will be redelivered: %r", exc)


def nak_delay(delivered: int, settings: Settings) -> float:
    """Exponential back-off: base, 2×base, 4×base, ... capped."""
    return float(min(settings.nak_base_delay_s * 2 ** (delivered - 1), settings.nak_max_delay_s))


class MaxDeliveriesWatcher:
    """Dead-letters what JetStream gave up on while no worker could (e.g. it crashed each time).

    JetStream publishes an advisory when a message reaches ``max_deliver`` without an ack; the
    message stays in the stream (limits retention), so it is read back by sequence.
    """

    def __init__(self, broker: NatsBroker, dead_letters: DeadLetters, settings: Settings) -> None:
        self._broker = broker
        self._dead_letters = dead_letters
        self._stream = settings.subjects.events_stream

    @property
    def subject(self) -> str:
        return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self._stream}.{EVENTS_CONSUMER}"

    async def on_advisory(self, advisory: dict[str, Any]) -> None:
        seq = int(advisory["stream_seq"])
        js = self._broker.config.connection_state.stream
        original = await js.get_msg(self._stream, seq)
        await self._dead_letters.send(
            code=DeadLetterCode.MAX_DELIVERIES,
            detail=f"not acknowledged after {advisory.get('deliveries')} deliveries",
            subject=original.subject or "",
            headers={k: str(v) for k, v in (original.headers or {}).items()},
            payload=original.data or b"",
            stream=self._stream,
            stream_seq=seq,
            deliveries=advisory.get("deliveries"),
        )
