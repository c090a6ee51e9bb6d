"""The events consumer (``worker.consumer``) in process: how a batch is fetched and topped up,
how each outcome is settled, and the one-by-one retry of a batch that could not be prepared.

Fakes: a pull subscription with scripted fetches, an intake that records its batches and
answers from a table, explanations that record announcements; the real ``Outage`` and
``DeadLetters`` (over a fake broker)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import Any, ClassVar, cast

import nats.errors
import pytest
from nats.js import JetStreamContext
from prometheus_client import Counter

from contracts.codes import DeadLetterCode
from contracts.subjects import EVENTS_CONSUMER
from tests.unit.fakes import T0, FakeBroker, FakeMsg, as_broker, as_msgs
from worker import delivery
from worker.consumer import EventConsumer
from worker.delivery import IDLE_FETCH_S, DeadLetters
from worker.errors import RejectedError, StoreOutageError, TransientError
from worker.explanations import Explanations
from worker.intake import Delivery, Intake, Prepared, Stored
from worker.metrics import (
    EVENTS_DEAD_LETTERED,
    EVENTS_DUPLICATE,
    EVENTS_RETRIED,
    EVENTS_STORED,
    GROUP_COMMITS,
    STORE_RETRIES,
    value,
)
from worker.outage import Outage
from worker.settings import Settings

SETTINGS = Settings(
    batch_size=4, batch_linger_s=0.003, max_deliver=3, nak_base_delay_s=0.5, nak_max_delay_s=8
)
LINGER = 0.003
Fetched = list[FakeMsg] | BaseException


class FakeSub:
    """A pull subscription: each ``fetch`` takes the next scripted answer (messages, or an
    exception to raise) and records ``(batch, timeout)``; past the script it calls ``idle``
    (if any) and raises ``TimeoutError``, as an idle fetch does."""

    def __init__(self, script: Sequence[Fetched], idle: Callable[[], None] | None = None) -> None:
        self.script = list(script)
        self.idle = idle
        self.fetches: list[tuple[int, float]] = []
        self.unsubscribed = 0

    async def fetch(self, batch: int = 1, timeout: float = 5) -> list[FakeMsg]:
        self.fetches.append((batch, timeout))
        await asyncio.sleep(0)  # a real fetch waits for the server: other tasks run meanwhile
        if not self.script:
            if self.idle is not None:
                self.idle()
            raise TimeoutError
        answer = self.script.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        assert len(answer) <= batch, "the server never sends more than asked for"
        return answer

    async def unsubscribe(self) -> None:
        self.unsubscribed += 1


class FakeJetStream:
    def __init__(self, sub: FakeSub) -> None:
        self.sub = sub
        self.bound: list[dict[str, str]] = []

    async def pull_subscribe_bind(self, *, durable: str, stream: str) -> FakeSub:
        self.bound.append({"durable": durable, "stream": stream})
        return self.sub


def stored(data: bytes, duplicate: bool = False) -> Stored:
    run_id = "run_" + data.decode()
    run = {"run_id": run_id, "revision": 1, "explanation_status": "PENDING"}
    return Stored(run_id, 1, duplicate, run)


class FakeIntake:
    """Records each prepared and committed batch (as the payloads); ``outcome`` maps a payload
    to what its commit says (default: stored); a batch holding a payload in ``poison`` fails to
    prepare; ``prepare_errors`` / ``commit_errors`` are raised by the next calls, in order."""

    def __init__(self, journal: list[str] | None = None) -> None:
        self.outcomes: dict[bytes, Stored | RejectedError] = {}
        self.poison: set[bytes] = set()
        self.prepare_errors: list[BaseException] = []
        self.commit_errors: list[BaseException] = []
        self.deliveries: list[list[Delivery]] = []
        self.prepared: list[list[bytes]] = []
        self.committed: list[list[bytes]] = []
        self.discarded: list[list[bytes]] = []
        self.commit_gate: asyncio.Event | None = None
        self.journal = journal
        self._batches: list[tuple[Prepared, list[bytes]]] = []

    def _note(self, text: str) -> None:
        if self.journal is not None:
            self.journal.append(text)

    def _datas(self, prepared: Prepared) -> list[bytes]:
        return next(datas for p, datas in self._batches if p is prepared)

    async def prepare(self, deliveries: Sequence[Delivery]) -> Prepared:
        datas = [d.data for d in deliveries]
        self.deliveries.append(list(deliveries))
        self.prepared.append(datas)
        self._note(f"prepare {b','.join(datas).decode()}")
        if self.prepare_errors:
            raise self.prepare_errors.pop(0)
        if self.poison & set(datas):
            raise ValueError("a bug met an odd event")
        prepared = Prepared([None] * len(datas), {}, {}, {})
        self._batches.append((prepared, datas))
        return prepared

    async def commit(self, prepared: Prepared) -> list[Stored | RejectedError]:
        datas = self._datas(prepared)
        self.committed.append(datas)
        self._note(f"commit {b','.join(datas).decode()}")
        if self.commit_gate is not None:
            await self.commit_gate.wait()
        if self.commit_errors:
            raise self.commit_errors.pop(0)
        self._note(f"committed {b','.join(datas).decode()}")
        return [self.outcomes.get(d) or stored(d) for d in datas]

    def discard(self, prepared: Prepared) -> None:
        self.discarded.append(self._datas(prepared))


class FakeExplanations:
    """Records the runs announced; raises for the run ids in ``failing``."""

    def __init__(self, journal: list[str] | None = None) -> None:
        self.announced: list[str] = []
        self.failing: set[str] = set()
        self.journal = journal

    async def announce_created(self, run: dict[str, Any]) -> None:
        self.announced.append(run["run_id"])
        if self.journal is not None:
            self.journal.append(f"announce {run['run_id']}")
        if run["run_id"] in self.failing:
            raise TimeoutError("no PubAck for explain.requested")


class Rig:
    """An ``EventConsumer`` and its fakes."""

    def __init__(self, settings: Settings = SETTINGS, script: Sequence[Fetched] = ()) -> None:
        self.journal: list[str] = []
        self.broker = FakeBroker(journal=self.journal)
        self.intake = FakeIntake(self.journal)
        self.explanations = FakeExplanations(self.journal)
        self.outage = Outage(keepalive_s=0.01, first_delay_s=0.001, max_delay_s=0.002)
        self.sub = FakeSub(script)
        self.js = FakeJetStream(self.sub)
        self.consumer = EventConsumer(
            cast(JetStreamContext, self.js),
            cast(Intake, self.intake),
            DeadLetters(as_broker(self.broker), settings),
            cast(Explanations, self.explanations),
            settings,
            self.outage,
        )

    def msgs(self, *datas: bytes, delivered: int = 1, failing: Iterable[str] = ()) -> list[FakeMsg]:
        return [
            FakeMsg(
                d,
                seq=int(d.decode().lstrip("x") or 0),
                delivered=delivered,
                timestamp=T0 + timedelta(milliseconds=i),
                failing=failing,
                journal=self.journal,
            )
            for i, d in enumerate(datas)
        ]

    async def next_batch(self) -> list[FakeMsg]:
        sub = cast(JetStreamContext.PullSubscription, self.sub)
        return cast(list[FakeMsg], await self.consumer._next_batch(sub))

    async def handle(self, msgs: list[FakeMsg]) -> None:
        await asyncio.wait_for(self.consumer.handle(as_msgs(msgs)), 2)

    async def end_outage(self) -> None:
        """A write that works: ends an outage a test began (and its keep-alive task)."""

        async def works() -> None:
            return None

        await self.outage.persist(works, asyncio.Event())
        assert not self.outage.active


class Counters:
    """The process-global event counters, relative to when this was made."""

    METRICS: ClassVar[dict[str, Counter]] = {
        "stored": EVENTS_STORED,
        "duplicate": EVENTS_DUPLICATE,
        "dead_lettered": EVENTS_DEAD_LETTERED,
        "retried": EVENTS_RETRIED,
        "commits": GROUP_COMMITS,
        "store_retries": STORE_RETRIES,
    }

    def __init__(self) -> None:
        self._start = {name: value(m) for name, m in self.METRICS.items()}

    def moved(self) -> dict[str, float]:
        now = {name: value(m) - self._start[name] for name, m in self.METRICS.items()}
        return {name: delta for name, delta in now.items() if delta}


@pytest.fixture(autouse=True)
def _no_fetch_retry_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delivery, "FETCH_RETRY_S", 0.0)


class TestNextBatch:
    """A fetch of 1 blocks until an event exists; the batch is topped up while events keep
    coming within ``batch_linger_s``, up to ``batch_size``."""

    async def test_idle(self) -> None:
        rig = Rig(script=[TimeoutError()])
        assert await rig.next_batch() == []
        assert rig.sub.fetches == [(1, IDLE_FETCH_S)]

    async def test_nats_timeout_is_idle_not_a_failure(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        rig = Rig(script=[nats.errors.TimeoutError()])
        with caplog.at_level(logging.DEBUG, "worker.delivery"):
            assert await rig.next_batch() == []
        assert "fetch failed" not in caplog.text

    async def test_tops_up_until_full(self) -> None:
        rig = Rig()
        m = rig.msgs(b"x1", b"x2", b"x3", b"x4", b"x5")
        rig.sub.script = [[m[0]], [m[1], m[2]], [m[3]], [m[4]]]
        assert await rig.next_batch() == m[:4]
        assert rig.sub.fetches == [(1, IDLE_FETCH_S), (3, LINGER), (1, LINGER)]
        assert rig.sub.script == [[m[4]]]  # left for the next batch

    async def test_a_pause_ends_it(self) -> None:
        rig = Rig()
        m = rig.msgs(b"x1", b"x2")
        rig.sub.script = [[m[0]], [m[1]], TimeoutError(), [*rig.msgs(b"x3")]]
        assert await rig.next_batch() == m
        assert rig.sub.fetches == [(1, IDLE_FETCH_S), (3, LINGER), (2, LINGER)]

    async def test_a_failed_top_up_keeps_what_it_has(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        rig = Rig()
        m = rig.msgs(b"x1")
        rig.sub.script = [m, nats.errors.ConnectionReconnectingError()]
        with caplog.at_level(logging.DEBUG, "worker.delivery"):
            assert await rig.next_batch() == m
        assert "fetch failed" not in caplog.text

    async def test_linger_has_a_floor(self) -> None:
        rig = Rig(Settings(batch_size=3, batch_linger_s=0), script=[rig_msg(), TimeoutError()])
        assert len(await rig.next_batch()) == 1
        assert rig.sub.fetches == [(1, IDLE_FETCH_S), (2, 0.001)]

    async def test_batch_size_one_never_tops_up(self) -> None:
        rig = Rig(Settings(batch_size=1), script=[rig_msg(), rig_msg()])
        assert len(await rig.next_batch()) == 1
        assert rig.sub.fetches == [(1, IDLE_FETCH_S)]

    async def test_failed_fetches_are_logged_once(self, caplog: pytest.LogCaptureFixture) -> None:
        """Fetches failing in a row: one warning, then debug lines; a fetch that works says so."""
        rig = Rig(
            script=[
                nats.errors.ConnectionReconnectingError(),
                nats.errors.NoRespondersError(),
                rig_msg(),
                TimeoutError(),
            ]
        )
        with caplog.at_level(logging.DEBUG, "worker.delivery"):
            assert await rig.next_batch() == []
            assert await rig.next_batch() == []
            assert len(await rig.next_batch()) == 1
        records = [
            (r.levelno, r.getMessage()) for r in caplog.records if r.name == "worker.delivery"
        ]
        assert [level for level, _ in records] == [logging.WARNING, logging.DEBUG, logging.INFO]
        assert records[0][1].startswith("events fetch failed (nats: connection reconnecting)")
        assert records[2][1] == "events fetch works again, after 2 failures"


def rig_msg() -> list[FakeMsg]:
    return [FakeMsg(b"x9", seq=9)]


class TestSettle:
    """Each outcome of a committed batch is settled on its own."""

    async def test_stored_is_announced_then_acked(self) -> None:
        rig = Rig()
        counters = Counters()
        m = rig.msgs(b"x1", b"x2", b"x3")
        rig.intake.outcomes[b"x2"] = stored(b"x2", duplicate=True)
        await rig.handle(m)
        assert rig.intake.prepared == rig.intake.committed == [[b"x1", b"x2", b"x3"]]
        assert [(d.subject_source, d.stored_at) for d in rig.intake.deliveries[0]] == [
            ("engine-a", msg.metadata.timestamp) for msg in m
        ]
        assert sorted(rig.explanations.announced) == ["run_x1", "run_x2", "run_x3"]
        assert [msg.calls for msg in m] == [[("ack",)]] * 3
        for n in (1, 2, 3):  # the request goes out before the ack
            assert rig.journal.index(f"announce run_x{n}") < rig.journal.index(f"ack {n}")
        assert rig.journal.index("committed x1,x2,x3") < rig.journal.index("announce run_x1")
        assert counters.moved() == {"stored": 2, "duplicate": 1, "commits": 1}
        assert rig.broker.attempts == []

    async def test_rejected_is_dead_lettered_then_termed(self) -> None:
        rig = Rig()
        counters = Counters()
        m = rig.msgs(b"x1", b"x2")
        rig.intake.outcomes[b"x1"] = RejectedError(DeadLetterCode.RUN_ID_CONFLICT, "held")
        await rig.handle(m)
        assert [msg.calls for msg in m] == [[("term",)], [("ack",)]]
        [letter] = rig.broker.published
        assert letter.subject == "rmos.runs.v1.dlq.RUN_ID_CONFLICT"
        assert (letter.body()["detail"], letter.body()["stream_seq"]) == ("held", 1)
        assert rig.journal.index("publish rmos.runs.v1.dlq.RUN_ID_CONFLICT") < rig.journal.index(
            "term 1"
        )
        assert rig.explanations.announced == ["run_x2"]
        assert counters.moved() == {"stored": 1, "dead_lettered": 1, "commits": 1}

    async def test_rejected_whose_letter_fails_is_retried(self) -> None:
        rig = Rig()
        rig.broker.refuse = lambda subject: True
        counters = Counters()
        m = rig.msgs(b"x1", delivered=2)
        rig.intake.outcomes[b"x1"] = RejectedError(DeadLetterCode.RUN_ID_CONFLICT, "held")
        await rig.handle(m)
        assert m[0].calls == [("nak", 1.0)]
        assert counters.moved() == {"retried": 1, "commits": 1}

    async def test_a_failing_announce_is_retried(self) -> None:
        rig = Rig()
        counters = Counters()
        m = rig.msgs(b"x1", b"x2", delivered=2)
        rig.explanations.failing = {"run_x1"}
        await rig.handle(m)
        assert [msg.calls for msg in m] == [[("nak", 1.0)], [("ack",)]]  # never acked unsent
        assert counters.moved() == {"stored": 1, "retried": 1, "commits": 1}

    async def test_a_failing_announce_on_the_last_delivery(self) -> None:
        rig = Rig()
        counters = Counters()
        m = rig.msgs(b"x1", delivered=3)
        rig.explanations.failing = {"run_x1"}
        await rig.handle(m)
        assert m[0].calls == [("term",)]
        [letter] = rig.broker.published
        assert letter.subject == "rmos.runs.v1.dlq.MAX_DELIVERIES"
        assert "no PubAck for explain.requested" in letter.body()["detail"]
        assert counters.moved() == {"retried": 1, "commits": 1}

    async def test_a_failing_ack_is_naked(self) -> None:
        """The ack is lost: naked with the back-off (that may be lost too: ack_wait)."""
        rig = Rig()
        m = rig.msgs(b"x1", failing={"ack"})
        await rig.handle(m)
        assert m[0].calls == [("ack",), ("nak", 0.5)]

    async def test_settlements_that_all_fail_do_not_raise(self) -> None:
        rig = Rig()
        m = rig.msgs(b"x1", b"x2", failing={"ack", "nak", "term"})
        rig.intake.outcomes[b"x2"] = RejectedError(DeadLetterCode.RUN_ID_CONFLICT, "held")
        await rig.handle(m)
        assert [msg.calls for msg in m] == [[("ack",), ("nak", 0.5)], [("term",), ("nak", 0.5)]]

    async def test_one_unsettled_ack_leaves_the_others_acked(self) -> None:
        """Acks go one after the other: one whose ack and nak both fail does not stop the rest."""
        rig = Rig()
        m = [*rig.msgs(b"x1", failing={"ack", "nak"}), *rig.msgs(b"x2", b"x3")]
        await rig.handle(m)
        assert [msg.calls for msg in m] == [[("ack",), ("nak", 0.5)], [("ack",)], [("ack",)]]


class TestCommitFails:
    async def test_transient_naks_the_whole_batch(self) -> None:
        rig = Rig()
        counters = Counters()
        rig.intake.commit_errors = [TransientError("index locked")]
        m = rig.msgs(b"x1", b"x2")
        await rig.handle(m)
        assert [msg.calls for msg in m] == [[("nak", 0.5)]] * 2
        assert rig.explanations.announced == []
        assert counters.moved() == {"retried": 2}

    async def test_an_outage_is_waited_out(self) -> None:
        """The same write is retried while the store is down; no delivery is spent."""
        rig = Rig()
        counters = Counters()
        rig.intake.commit_errors = [StoreOutageError("ENOSPC"), StoreOutageError("ENOSPC")]
        m = rig.msgs(b"x1")
        await rig.handle(m)
        assert rig.intake.committed == [[b"x1"]] * 3
        assert rig.intake.prepared == [[b"x1"]]
        assert m[0].calls == [("ack",)]
        assert not rig.outage.active
        assert counters.moved() == {"stored": 1, "commits": 1, "store_retries": 2}

    async def test_an_outage_while_stopping_hands_back(self) -> None:
        rig = Rig()
        rig.consumer.stop()
        rig.intake.commit_errors = [StoreOutageError("ENOSPC")]
        m = rig.msgs(b"x1", b"x2")
        await rig.handle(m)
        assert [msg.calls for msg in m] == [[("nak", None)]] * 2  # at once, for the next worker
        assert rig.intake.discarded == [[b"x1", b"x2"]]
        await rig.end_outage()

    async def test_an_outage_in_prepare_while_stopping_hands_back(self) -> None:
        rig = Rig()
        rig.consumer.stop()
        rig.intake.prepare_errors = [StoreOutageError("EIO")]
        m = rig.msgs(b"x1", b"x2")
        await rig.handle(m)
        assert [msg.calls for msg in m] == [[("nak", None)]] * 2
        assert rig.intake.committed == []
        await rig.end_outage()


class TestIsolate:
    """A batch that cannot be prepared is retried one by one: one bad event cannot sink the
    rest."""

    async def test_one_bad_event(self, caplog: pytest.LogCaptureFixture) -> None:
        rig = Rig()
        counters = Counters()
        m = rig.msgs(b"x1", b"x2", b"x3")
        rig.intake.poison = {b"x2"}
        with caplog.at_level(logging.ERROR, "worker.consumer"):
            await rig.handle(m)
        assert rig.intake.prepared == [[b"x1", b"x2", b"x3"], [b"x1"], [b"x2"], [b"x3"]]
        assert rig.intake.committed == [[b"x1"], [b"x3"]]
        assert [msg.calls for msg in m] == [[("ack",)], [("nak", 0.5)], [("ack",)]]
        assert counters.moved() == {"stored": 2, "retried": 1, "commits": 2}
        assert [r.getMessage() for r in caplog.records] == [
            "batch of 3 failed; retrying one by one",
            "event at stream seq 2 failed",
        ]

    async def test_bad_on_its_last_delivery(self) -> None:
        rig = Rig()
        m = rig.msgs(b"x1", b"x2", delivered=3)
        rig.intake.poison = {b"x1"}
        await rig.handle(m)
        assert [msg.calls for msg in m] == [[("term",)], [("ack",)]]
        [letter] = rig.broker.published
        assert letter.subject == "rmos.runs.v1.dlq.MAX_DELIVERIES"
        assert letter.body()["detail"] == (
            "failed on all 3 deliveries; last error: ValueError('a bug met an odd event')"
        )

    async def test_a_passing_failure_of_the_batch(self) -> None:
        """The batch failed once for no event's fault: each event alone then works."""
        rig = Rig()
        rig.intake.prepare_errors = [TransientError("blob look-up failed")]
        m = rig.msgs(b"x1", b"x2")
        await rig.handle(m)
        assert rig.intake.committed == [[b"x1"], [b"x2"]]
        assert [msg.calls for msg in m] == [[("ack",)]] * 2


class TestRun:
    """The pull loop: fetch, prepare, commit in a pipeline, until stopped."""

    async def test_batches_in_order_then_stop(self) -> None:
        rig = Rig()
        m = rig.msgs(b"x1", b"x2", b"x3")
        rig.sub.script = [[m[0]], [m[1]], TimeoutError(), [m[2]], TimeoutError()]
        rig.sub.idle = rig.consumer.stop
        await asyncio.wait_for(rig.consumer.run(), 2)
        assert rig.js.bound == [{"durable": EVENTS_CONSUMER, "stream": "RMOS_RUN_EVENTS"}]
        assert rig.intake.committed == [[b"x1", b"x2"], [b"x3"]]
        assert [msg.calls for msg in m] == [[("ack",)]] * 3
        assert rig.sub.unsubscribed == 1

    async def test_the_next_batch_is_prepared_while_one_commits(self) -> None:
        """Batch 2 is prepared while batch 1 commits, and commits only after it (stream
        order): batch 1's commit ends a few ms after batch 2 is prepared."""
        rig = Rig()
        m = rig.msgs(b"x1", b"x2")
        rig.sub.script = [[m[0]], TimeoutError(), [m[1]], TimeoutError()]
        rig.sub.idle = rig.consumer.stop
        gate = rig.intake.commit_gate = asyncio.Event()
        prepare = rig.intake.prepare

        async def open_on_second(deliveries: Sequence[Delivery]) -> Prepared:
            if len(rig.intake.prepared) == 1:  # the second batch: the first commit ends soon
                asyncio.get_running_loop().call_later(0.005, gate.set)
            return await prepare(deliveries)

        rig.intake.prepare = open_on_second  # type: ignore[method-assign]
        await asyncio.wait_for(rig.consumer.run(), 2)
        steps = [s for s in rig.journal if s.split()[0] in ("prepare", "commit", "committed")]
        assert steps == [
            "prepare x1",
            "commit x1",
            "prepare x2",
            "committed x1",
            "commit x2",
            "committed x2",
        ]
        assert [msg.calls for msg in m] == [[("ack",)]] * 2

    async def test_a_batch_fetched_while_stopping_is_handed_back(self) -> None:
        rig = Rig()
        m = rig.msgs(b"x1")

        rig.sub.script = [m]
        rig.sub.idle = rig.consumer.stop  # during the top-up fetch
        await asyncio.wait_for(rig.consumer.run(), 2)
        assert m[0].calls == [("nak", None)]
        assert rig.intake.prepared == []

    async def test_stop_ends_an_idle_loop(self) -> None:
        rig = Rig()
        rig.sub.idle = rig.consumer.stop
        await asyncio.wait_for(rig.consumer.run(), 2)
        assert rig.sub.fetches == [(1, IDLE_FETCH_S)]
        assert rig.sub.unsubscribed == 1
