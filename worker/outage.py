"""A store that fails as a whole pauses the consumers instead of spending their deliveries.

A ``StoreOutageError`` (no space, I/O errors, a read-only file system, a JetStream store without a
leader) says nothing about the message in hand, so nacking it would be wrong: after
``max_deliver`` naks (about a minute with the defaults) every event in flight would become a
``MAX_DELIVERIES`` dead letter. Instead, while the store is down:

- the write that failed is retried as it is, after a delay that doubles up to a cap;
- every message the consumers hold is kept alive with ``in_progress()`` (JetStream neither
  redelivers it nor counts a delivery);
- the consumers fetch nothing more (:meth:`Outage.passable`);
- the outage is logged once with its cause, and once when it ends, and shown by the gauge
  ``rmos_store_outage`` (1 while down), and by ``/readyz`` with its cause (``worker.health``).

One ``Outage`` serves a worker's consumers: any write that works again ends it. A failure that
belongs to one message is not an outage and keeps the per-message rule (``DeadLetters.retry``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from nats.aio.msg import Msg

from worker.errors import StoreOutageError
from worker.metrics import STORE_OUTAGE, STORE_RETRIES

log = logging.getLogger(__name__)
T = TypeVar("T")


class Outage:
    """Whether the store is down, the messages held meanwhile, and the retries of writes."""

    def __init__(
        self,
        *,
        keepalive_s: float,
        first_delay_s: float,
        max_delay_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keepalive_s = keepalive_s
        self._first_delay_s = first_delay_s
        self._max_delay_s = max_delay_s
        self._clock = clock
        self._held: list[Sequence[Msg]] = []
        self._since: float | None = None
        self.cause: str | None = None  # what the failed write said, while down
        self._ended = asyncio.Event()
        self._ended.set()
        self._keeper: asyncio.Task[None] | None = None
        STORE_OUTAGE.set(value=0)

    @property
    def active(self) -> bool:
        return self._since is not None

    def hold(self, msgs: Sequence[Msg]) -> None:
        """``msgs`` are in hand until :meth:`release`: kept alive while the store is down."""
        self._held.append(msgs)

    def release(self, msgs: Sequence[Msg]) -> None:
        with contextlib.suppress(ValueError):
            self._held.remove(msgs)

    async def passable(self, stopping: asyncio.Event) -> None:
        """Return once the store is not known to be down (or the consumer stops): a consumer
        waits here before it fetches more."""
        if self._ended.is_set() or stopping.is_set():
            return
        stop = asyncio.create_task(stopping.wait())
        ended = asyncio.create_task(self._ended.wait())
        try:
            await asyncio.wait((stop, ended), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            ended.cancel()

    async def persist(
        self, attempt: Callable[[], Awaitable[T]], stopping: asyncio.Event, *, write: bool = True
    ) -> T:
        """``attempt()``'s result, retried for as long as the store is down. Raises what else
        it raises, and the last ``StoreOutageError`` when ``stopping`` is set meanwhile.

        A ``write`` that works (or fails for another reason: the store answered) ends an
        outage; a read does not, as reads often work on a full disk."""
        delay = self._first_delay_s
        while True:
            try:
                result = await attempt()
            except StoreOutageError as exc:
                self._down(exc)
                if stopping.is_set():
                    raise
                STORE_RETRIES.inc()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), delay)
                delay = min(2 * delay, self._max_delay_s)
                continue
            except BaseException:
                if write:
                    self._up()
                raise
            if write:
                self._up()
            return result

    def _down(self, exc: StoreOutageError) -> None:
        if self._since is not None:
            log.debug("store still down: %s", exc)
            return
        self._since = self._clock()
        self.cause = str(exc)
        self._ended.clear()
        STORE_OUTAGE.set(value=1)
        held = sum(len(msgs) for msgs in self._held)
        log.error(
            "store outage: %s; ingest paused, %d messages held (kept alive), retrying", exc, held
        )
        self._keeper = asyncio.create_task(self._keep_alive(), name="outage-keepalive")

    def _up(self) -> None:
        if self._since is None:
            return
        log.warning("store works again after %.1f s; ingest resumed", self._clock() - self._since)
        self._since = None
        self.cause = None
        self._ended.set()
        STORE_OUTAGE.set(value=0)
        if self._keeper is not None:
            self._keeper.cancel()
            self._keeper = None

    async def _keep_alive(self) -> None:
        """While down: ``in_progress()`` for every held message, now and every ``keepalive_s``
        (a third of ``ack_wait``, so that a late or lost one still comes in time)."""
        warned = False
        while True:
            held = [m for msgs in list(self._held) for m in msgs]
            results = await asyncio.gather(*(m.in_progress() for m in held), return_exceptions=True)
            failed = [r for r in results if isinstance(r, BaseException)]
            if failed and not warned:  # NATS is down too: they come back after ack_wait
                log.warning("%d held messages not kept alive: %r", len(failed), failed[0])
                warned = True
            await asyncio.sleep(self._keepalive_s)
