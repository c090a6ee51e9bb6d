"""Request–reply on a plain nats-py queue subscription of the broker's connection.

The API's requests used to reach their handler through a FastStream subscriber; measured alone
with an echo handler (issue 14), that subscriber spent ~295 µs of CPU a request with
``max_workers`` (AnyIO task groups, semaphores, memory streams and ``sniffio`` look-ups on every
message) against ~90 µs for a nats-py subscription. The handler here gets the nats-py message
and returns the reply; this module only bounds how many run at once and stops cleanly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Protocol

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

log = logging.getLogger(__name__)


class Answer(Protocol):
    """What a handler returns: the reply's body and headers."""

    @property
    def body(self) -> bytes: ...
    @property
    def headers(self) -> dict[str, str]: ...


class Responder:
    """Answers the requests on ``subject`` in queue group ``queue``, at most ``concurrency`` at
    a time (a slow ``list`` never holds up a ``get``); requests beyond that wait, in arrival
    order, in the subscription's buffer."""

    def __init__(
        self,
        subject: str,
        queue: str,
        handler: Callable[[Msg], Awaitable[Answer]],
        *,
        concurrency: int,
    ) -> None:
        self.subject = subject
        self.queue = queue
        self._handler = handler
        self._slots = asyncio.Semaphore(concurrency)
        self._answering: set[asyncio.Task[None]] = set()
        self._nc: Client | None = None
        self._sub: Subscription | None = None
        self._stopped = False

    async def start(self, nc: Client) -> None:
        """Subscribe on ``nc`` (nats-py subscribes again by itself after a reconnect)."""
        self._nc = nc
        self._sub = await nc.subscribe(self.subject, queue=self.queue, cb=self._received)

    async def _received(self, msg: Msg) -> None:
        # nats-py awaits this before it hands over the next message: waiting for a slot here
        # is the back-pressure.
        await self._slots.acquire()
        if self._stopped:  # taken after a stop ran out of time: its requester times out
            self._slots.release()
            return
        task = asyncio.create_task(self._answer(msg))
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)

    async def _answer(self, msg: Msg) -> None:
        try:
            answer = await self._handler(msg)
            if msg.reply and self._nc is not None:
                await self._nc.publish(msg.reply, answer.body, headers=answer.headers)
        except Exception as exc:  # a reply that cannot be sent: the requester times out
            log.warning("no reply sent to a request on %s: %r", msg.subject, exc)
        finally:
            self._slots.release()

    async def stop(self, timeout: float) -> None:
        """Take no more requests; answer those already received. ``timeout`` bounds the whole
        stop: what is still running then is cancelled (its requester times out)."""
        sub, self._sub = self._sub, None
        if sub is None:
            return
        deadline = time.monotonic() + timeout
        with suppress(Exception):  # a connection already closed or draining: nothing to drain
            await asyncio.wait_for(sub.drain(), timeout)  # type: ignore[no-untyped-call]
        self._stopped = True  # a drain cut short leaves requests that are no longer started
        if self._answering:
            remaining = max(deadline - time.monotonic(), 0.0)
            _, late = await asyncio.wait(set(self._answering), timeout=remaining)
            for task in late:
                task.cancel()
            if late:
                log.warning("%d API requests unanswered at stop", len(late))
