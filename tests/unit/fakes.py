"""In-process stand-ins for what the consumers and publishers talk to: a JetStream message that
records how it was settled, and a broker that records (or refuses) what is published."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from faststream.nats import NatsBroker
from nats.aio.msg import Msg

T0 = datetime(2026, 11, 24, 10, 0, 0, 123456, tzinfo=UTC)
EVENTS_STREAM = "RMOS_RUN_EVENTS"


class SettleError(Exception):
    """What a fake message raises for a settlement it was told to fail (NATS gone, say)."""


class FakeMsg:
    """A message delivered by JetStream: ``calls`` records every ``ack``/``nak``/``term``/
    ``in_progress`` in order (also those that raised), e.g. ``[("nak", 0.5)]``; a method named
    in ``failing`` raises :class:`SettleError`. ``journal``, when given, is shared with other
    fakes to check the order of steps across them."""

    def __init__(
        self,
        data: bytes = b"{}",
        *,
        seq: int = 1,
        delivered: int = 1,
        subject: str = "rmos.runs.v1.events.engine-a",
        headers: dict[str, str] | None = None,
        stream: str = EVENTS_STREAM,
        timestamp: datetime = T0,
        failing: Iterable[str] = (),
        journal: list[str] | None = None,
    ) -> None:
        self.subject = subject
        self.data = data
        self.headers = headers
        self.metadata = Msg.Metadata(
            sequence=Msg.Metadata.SequencePair(consumer=seq, stream=seq),
            num_pending=0,
            num_delivered=delivered,
            timestamp=timestamp,
            stream=stream,
            consumer="rmos-worker-events",
        )
        self.failing = set(failing)
        self.calls: list[tuple[Any, ...]] = []
        self.journal = journal

    def _record(self, name: str, *args: Any) -> None:
        self.calls.append((name, *args))
        if self.journal is not None:
            self.journal.append(f"{name} {self.metadata.sequence.stream}")
        if name in self.failing:
            raise SettleError(f"{name} of seq {self.metadata.sequence.stream} not sent")

    async def ack(self) -> None:
        self._record("ack")

    async def nak(self, delay: float | None = None) -> None:
        self._record("nak", delay)

    async def term(self) -> None:
        self._record("term")

    async def in_progress(self) -> None:
        self._record("in_progress")


def as_msg(fake: FakeMsg) -> Msg:
    return cast(Msg, fake)


def as_msgs(fakes: Iterable[FakeMsg]) -> list[Msg]:
    return [as_msg(f) for f in fakes]


@dataclass(frozen=True, slots=True)
class Published:
    """One ``broker.publish`` as it was called."""

    subject: str
    data: bytes
    headers: dict[str, str]
    stream: str | None
    timeout: float | None

    def body(self) -> Any:
        return json.loads(self.data)


class PublishError(Exception):
    """What the fake broker raises for a publish it was told to refuse (no PubAck)."""


class FakeBroker:
    """``publish`` records each call in ``attempts``; those not refused (``refuse(subject)``
    false) also in ``published``; ``journal`` as for :class:`FakeMsg`."""

    def __init__(
        self,
        refuse: Callable[[str], bool] = lambda subject: False,
        journal: list[str] | None = None,
    ) -> None:
        self.refuse = refuse
        self.attempts: list[Published] = []
        self.published: list[Published] = []
        self.journal = journal

    async def publish(
        self,
        message: bytes,
        subject: str,
        *,
        headers: dict[str, str] | None = None,
        stream: str | None = None,
        timeout: float | None = None,
    ) -> None:
        call = Published(subject, message, dict(headers or {}), stream, timeout)
        self.attempts.append(call)
        if self.journal is not None:
            self.journal.append(f"publish {subject}")
        if self.refuse(subject):
            raise PublishError(f"no PubAck for {subject}")
        self.published.append(call)

    def forget(self) -> None:
        """Forget what was published so far (the set-up of a test)."""
        self.attempts.clear()
        self.published.clear()


def as_broker(fake: FakeBroker) -> NatsBroker:
    return cast(NatsBroker, fake)
