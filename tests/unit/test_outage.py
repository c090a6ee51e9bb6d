"""The outage state machine: when it begins and ends, what it keeps alive, when it gives up."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, cast

import pytest
from nats.aio.msg import Msg

from worker.errors import StoreOutageError, TransientError
from worker.metrics import STORE_OUTAGE, value
from worker.outage import Outage


class HeldMsg:
    """Counts the ``in_progress()`` a held message gets."""

    def __init__(self) -> None:
        self.kept_alive = 0

    async def in_progress(self) -> None:
        self.kept_alive += 1


def failing(times: int, then: Any = "stored") -> Callable[[], Coroutine[Any, Any, Any]]:
    """An attempt that fails as an outage ``times`` times, then returns ``then`` (or raises)."""
    calls = [0]

    async def attempt() -> Any:
        calls[0] += 1
        if calls[0] <= times:
            raise StoreOutageError("group commit failed: No space left on device")
        if isinstance(then, BaseException):
            raise then
        return then

    return attempt


async def begun(outage: Outage) -> None:
    """One failed write, given up at once (as when stopping): the outage has begun."""
    stop = asyncio.Event()
    stop.set()
    with pytest.raises(StoreOutageError):
        await outage.persist(failing(1), stop)


def fast() -> Outage:
    return Outage(keepalive_s=0.01, first_delay_s=0.01, max_delay_s=0.02)


async def test_retries_until_it_works(caplog: pytest.LogCaptureFixture) -> None:
    outage = fast()
    msgs = [HeldMsg(), HeldMsg()]
    outage.hold(cast(list[Msg], msgs))
    with caplog.at_level(logging.DEBUG, logger="worker.outage"):
        assert await outage.persist(failing(5), asyncio.Event()) == "stored"
    assert not outage.active
    assert value(STORE_OUTAGE) == 0
    assert all(m.kept_alive >= 1 for m in msgs)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 2  # once when it begins, once when it ends
    assert lines[0].startswith("store outage: group commit failed: No space left on device")
    assert "2 messages held" in lines[0]
    assert lines[1].startswith("store works again after")


async def test_a_read_does_not_end_it() -> None:
    outage = fast()
    await begun(outage)
    assert outage.active
    assert value(STORE_OUTAGE) == 1
    await outage.persist(failing(0), asyncio.Event(), write=False)
    assert outage.active  # reads work on a full disk: no proof that writes do
    await outage.persist(failing(0), asyncio.Event())
    assert not outage.active


async def test_another_failure_ends_it_and_propagates() -> None:
    """The store answered, with a failure of one message: no longer an outage."""
    outage = fast()
    with pytest.raises(TransientError, match="corrupt"):
        await outage.persist(failing(2, TransientError("corrupt file")), asyncio.Event())
    assert not outage.active


async def test_stopping_gives_up_at_once() -> None:
    outage = fast()
    stop = asyncio.Event()

    async def stop_soon() -> None:
        await asyncio.sleep(0.05)
        stop.set()

    stopper = asyncio.create_task(stop_soon())
    with pytest.raises(StoreOutageError):
        await asyncio.wait_for(outage.persist(failing(10**6), stop), 5)
    await stopper


async def test_passable_waits_for_the_end() -> None:
    outage = fast()
    await begun(outage)
    waiting = asyncio.create_task(outage.passable(asyncio.Event()))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # no fetch while the store is down
    await outage.persist(failing(0), asyncio.Event())
    await asyncio.wait_for(waiting, 1)
    stopping = asyncio.Event()
    stopping.set()
    await asyncio.wait_for(outage.passable(stopping), 1)  # never blocks a stop


async def test_released_messages_are_not_kept_alive() -> None:
    outage = fast()
    kept, released = [HeldMsg()], [HeldMsg()]
    outage.hold(cast(list[Msg], kept))
    outage.hold(cast(list[Msg], released))
    outage.release(cast(list[Msg], released))
    await outage.persist(failing(3), asyncio.Event())
    assert kept[0].kept_alive >= 1
    assert released[0].kept_alive == 0
