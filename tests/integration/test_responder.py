"""The API's request–reply endpoint (``worker.responder``) on a real nats-server: bounded
concurrency, replies with headers, and a stop that answers what it has received."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from worker.nats_server import NatsServer
from worker.responder import Responder
from worker.testing import eventually

pytestmark = pytest.mark.integration
SUBJECT = "t.api.>"


@dataclass(frozen=True)
class Answer:
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


class Gated:
    """A handler that echoes the body once ``gate`` is open, counting what runs at once."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.running = 0
        self.most = 0

    async def __call__(self, msg: Msg) -> Answer:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            if msg.subject != "t.api.fast":
                await self.gate.wait()
            return Answer(msg.data, {"Op": msg.subject.rpartition(".")[2]})
        finally:
            self.running -= 1

    async def started(self, count: int) -> None:
        async def check() -> bool | None:
            return True if self.running >= count else None

        await eventually(check, timeout=10)


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    conn = await nats.connect(nats_server.url)
    try:
        yield conn
    finally:
        await conn.close()


async def serving(nc: Client, handler: Gated, concurrency: int = 2) -> Responder:
    responder = Responder(SUBJECT, "q", handler, concurrency=concurrency)
    await responder.start(nc)
    return responder


class TestResponder:
    """Requests are answered concurrently, at most ``concurrency`` at a time."""

    async def test_bounded(self, nc: Client) -> None:
        """Five slow requests with two slots: two run, the rest wait, all are answered."""
        handler = Gated()
        responder = await serving(nc, handler)
        calls = [
            asyncio.create_task(nc.request("t.api.slow", str(i).encode(), timeout=10))
            for i in range(5)
        ]
        await handler.started(2)
        await asyncio.sleep(0.3)  # time for a third to start, were it let in
        assert handler.most == 2
        handler.gate.set()
        replies = await asyncio.gather(*calls)
        assert sorted(r.data for r in replies) == [str(i).encode() for i in range(5)]
        assert all(r.headers == {"Op": "slow"} for r in replies)
        await responder.stop(5)

    async def test_fast_not_held_by_slow(self, nc: Client) -> None:
        """A request that finishes at once is answered while a slow one holds a slot."""
        handler = Gated()
        responder = await serving(nc, handler)
        slow = asyncio.create_task(nc.request("t.api.slow", b"s", timeout=10))
        await handler.started(1)
        fast = await nc.request("t.api.fast", b"f", timeout=5)
        assert fast.data == b"f"
        assert not slow.done()
        handler.gate.set()
        assert (await slow).data == b"s"
        await responder.stop(5)

    async def test_stop_answers_what_it_received(self, nc: Client) -> None:
        """A stop waits for requests in hand, then takes no more."""
        handler = Gated()
        responder = await serving(nc, handler)
        calls = [
            asyncio.create_task(nc.request("t.api.slow", str(i).encode(), timeout=10))
            for i in range(3)
        ]
        await handler.started(2)  # the third waits for a slot
        stopping = asyncio.create_task(responder.stop(10))
        await asyncio.sleep(0.2)
        assert not stopping.done()
        handler.gate.set()
        assert len(await asyncio.gather(*calls)) == 3
        await asyncio.wait_for(stopping, 10)
        with pytest.raises(nats.errors.NoRespondersError):
            await nc.request("t.api.slow", b"late", timeout=2)

    async def test_stop_is_bounded(self, nc: Client) -> None:
        """Handlers that never return are cancelled when the stop's time is up, and a request
        still waiting for a slot then is not started."""
        handler = Gated()
        responder = await serving(nc, handler)
        calls = [
            asyncio.create_task(nc.request("t.api.slow", b"hung", timeout=3)) for _ in range(3)
        ]
        await handler.started(2)
        await asyncio.wait_for(responder.stop(0.5), 5)
        assert handler.running == 0
        await asyncio.sleep(0.3)  # time for the third to start, were it let in
        assert handler.running == 0
        assert handler.most == 2
        for call in calls:
            with pytest.raises(nats.errors.TimeoutError):
                await call
