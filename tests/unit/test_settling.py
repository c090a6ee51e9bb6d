"""The delivery policy (``worker.delivery``) with a fake message and a fake broker: what each
failure does to its message, the back-off, the last delivery, and dead letters that fail."""

from __future__ import annotations

import base64
import hashlib
import logging
from dataclasses import dataclass
from datetime import timedelta

import pytest

from contracts.codes import DeadLetterCode
from contracts.models import DeadLetter
from tests.unit.fakes import (
    T0,
    FakeBroker,
    FakeMsg,
    PublishError,
    as_broker,
    as_msg,
)
from worker.core.timefmt import utc_text
from worker.delivery import Action, DeadLetters, action_for, reply_for, settle_failure
from worker.errors import (
    RejectedError,
    RevisionConflictError,
    StoreOutageError,
    TransientError,
    UnavailableError,
)
from worker.metrics import DEAD_LETTERS, value
from worker.settings import Settings

# Back-off 0.5, 1.0, then capped at 1.5; the 4th delivery is the last one.
SETTINGS = Settings(max_deliver=4, nak_base_delay_s=0.5, nak_max_delay_s=1.5, publish_timeout_s=2)
NOW = T0 + timedelta(minutes=5)
DLQ = "rmos.runs.v1.dlq."
REJECTED = RejectedError(DeadLetterCode.SCHEMA_VIOLATION, "decision.score: not an integer")


def dead_letters(broker: FakeBroker, settings: Settings = SETTINGS) -> DeadLetters:
    return DeadLetters(as_broker(broker), settings, clock=lambda: NOW)


def refuse_all(subject: str) -> bool:
    return True


class TestActionFor:
    """What a failure means for its message depends on its type only."""

    @pytest.mark.parametrize(
        ("failure", "action"),
        [
            (REJECTED, Action.DEAD_LETTER),
            (StoreOutageError("No space left on device"), Action.HAND_BACK),
            (TransientError("index busy"), Action.RETRY),
            (UnavailableError("index rebuilding"), Action.RETRY),  # transient, not an outage
            (RevisionConflictError("run_x", 1, 2), Action.RETRY),
            (ValueError("a bug"), Action.RETRY),
            (TimeoutError(), Action.RETRY),
        ],
        ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
    )
    def test_action(self, failure: BaseException, action: Action) -> None:
        assert action_for(failure) is action


@dataclass(frozen=True)
class Case:
    failure: BaseException
    delivered: int
    action: Action
    calls: list[tuple[object, ...]]
    letters: list[str]  # the codes dead-lettered, in order


CASES = {
    "rejected: its code, then term": Case(
        REJECTED, 1, Action.DEAD_LETTER, [("term",)], ["SCHEMA_VIOLATION"]
    ),
    "rejected on the last delivery: still its own code": Case(
        REJECTED, 4, Action.DEAD_LETTER, [("term",)], ["SCHEMA_VIOLATION"]
    ),
    "store outage: nak at once": Case(
        StoreOutageError("EIO"), 1, Action.HAND_BACK, [("nak", None)], []
    ),
    "store outage on the last delivery: nak at once, no dead letter": Case(
        StoreOutageError("EIO"), 4, Action.HAND_BACK, [("nak", None)], []
    ),
    "transient, 1st delivery: base delay": Case(
        TransientError("busy"), 1, Action.RETRY, [("nak", 0.5)], []
    ),
    "transient, 2nd delivery: doubled": Case(
        TransientError("busy"), 2, Action.RETRY, [("nak", 1.0)], []
    ),
    "any exception, 3rd delivery: capped": Case(
        ValueError("bug"), 3, Action.RETRY, [("nak", 1.5)], []
    ),
    "transient on the last delivery: MAX_DELIVERIES, then term": Case(
        TransientError("busy"), 4, Action.RETRY, [("term",)], ["MAX_DELIVERIES"]
    ),
    "past the last delivery (max_deliver lowered): MAX_DELIVERIES": Case(
        ValueError("bug"), 9, Action.RETRY, [("term",)], ["MAX_DELIVERIES"]
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
async def test_settle_failure(case: Case) -> None:
    journal: list[str] = []
    broker = FakeBroker(journal=journal)
    msg = FakeMsg(b'{"a": 1}', seq=7, delivered=case.delivered, journal=journal)
    action = await settle_failure(as_msg(msg), case.failure, dead_letters(broker))
    assert action is case.action
    assert msg.calls == case.calls
    assert [p.subject for p in broker.published] == [DLQ + code for code in case.letters]
    if case.letters:  # stored (PubAck awaited) before the message is termed
        assert journal == [f"publish {DLQ}{case.letters[0]}", "term 7"]


class TestDeadLetterBody:
    """What ``send_for`` publishes: CONTRACT section 7, with a deterministic message id."""

    async def test_rejected(self) -> None:
        broker = FakeBroker()
        payload = b'{"schema": "rmos.run_event.v1", "decision": {"score": "high"}}'
        msg = FakeMsg(
            payload,
            seq=42,
            delivered=2,
            subject="rmos.runs.v1.events.engine-b",
            headers={"Nats-Msg-Id": "engine-b:e-9", "traceparent": "00-ab-cd-01"},
        )
        before = value(DEAD_LETTERS.labels("SCHEMA_VIOLATION"))
        await settle_failure(as_msg(msg), REJECTED, dead_letters(broker))
        [letter] = broker.published
        assert letter.subject == "rmos.runs.v1.dlq.SCHEMA_VIOLATION"
        assert letter.stream == "RMOS_DLQ"
        assert letter.timeout == 2
        assert letter.headers == {
            "Nats-Msg-Id": "dlq:RMOS_RUN_EVENTS:42",
            "content-type": "application/json",
        }
        body = letter.body()
        DeadLetter.model_validate(body)
        assert body == {
            "schema": "rmos.dead_letter.v1",
            "code": "SCHEMA_VIOLATION",
            "detail": "decision.score: not an integer",
            "original_subject": "rmos.runs.v1.events.engine-b",
            "original_headers": {"Nats-Msg-Id": "engine-b:e-9", "traceparent": "00-ab-cd-01"},
            "payload_b64": base64.b64encode(payload).decode(),
            "payload_truncated": False,
            "payload_size": len(payload),
            "payload_sha256": hashlib.sha256(payload).hexdigest(),
            "stream_seq": 42,
            "deliveries": 2,
            "dead_lettered_at": utc_text(NOW),
        }
        assert value(DEAD_LETTERS.labels("SCHEMA_VIOLATION")) == before + 1

    async def test_max_deliveries(self) -> None:
        """The last delivery's letter says how often it failed and the last error."""
        broker = FakeBroker()
        msg = FakeMsg(b"x", seq=3, delivered=4)  # no headers at all
        await settle_failure(as_msg(msg), TransientError("index busy"), dead_letters(broker))
        [letter] = broker.published
        body = letter.body()
        DeadLetter.model_validate(body)
        assert body["code"] == "MAX_DELIVERIES"
        assert (
            body["detail"] == "failed on all 4 deliveries; last error: TransientError('index busy')"
        )
        assert (body["original_headers"], body["deliveries"], body["stream_seq"]) == ({}, 4, 3)
        assert letter.headers["Nats-Msg-Id"] == "dlq:RMOS_RUN_EVENTS:3"

    async def test_prefixes_and_the_message_stream(self) -> None:
        """Subject and DLQ stream follow the deployment's prefixes; the message id names the
        stream the message came from."""
        settings = Settings(subject_prefix="acme.runs", stream_prefix="ACME")
        broker = FakeBroker()
        msg = FakeMsg(b"x", seq=5, stream="ACME_RUN_EVENTS", subject="acme.runs.v1.events.a")
        await dead_letters(broker, settings).send_for(as_msg(msg), "INVALID_JSON", "not json")
        [letter] = broker.published
        assert (letter.subject, letter.stream) == ("acme.runs.v1.dlq.INVALID_JSON", "ACME_DLQ")
        assert letter.headers["Nats-Msg-Id"] == "dlq:ACME_RUN_EVENTS:5"
        assert letter.timeout == 5.0  # the default publish_timeout_s

    async def test_a_refused_letter_is_not_counted(self) -> None:
        before = value(DEAD_LETTERS.labels("INVALID_JSON"))
        with pytest.raises(PublishError):
            await dead_letters(FakeBroker(refuse_all)).send_for(
                as_msg(FakeMsg()), "INVALID_JSON", "x"
            )
        assert value(DEAD_LETTERS.labels("INVALID_JSON")) == before


class TestDeadLetterNotStored:
    """Nothing is termed unrecorded: a dead letter without its PubAck turns into a retry."""

    async def test_rejected_is_retried(self, caplog: pytest.LogCaptureFixture) -> None:
        broker = FakeBroker(refuse_all)
        msg = FakeMsg(seq=8, delivered=2)
        with caplog.at_level(logging.WARNING, "worker.delivery"):
            action = await settle_failure(as_msg(msg), REJECTED, dead_letters(broker))
        assert action is Action.RETRY
        assert msg.calls == [("nak", 1.0)]  # the back-off of the 2nd delivery, never a term
        assert [p.subject for p in broker.attempts] == [DLQ + "SCHEMA_VIOLATION"]
        assert "dead letter for seq 8 not stored" in caplog.text

    async def test_rejected_on_the_last_delivery_becomes_max_deliveries(self) -> None:
        """Its own letter refused, the MAX_DELIVERIES one stored: termed after that one."""
        broker = FakeBroker(refuse=lambda subject: subject.endswith("SCHEMA_VIOLATION"))
        msg = FakeMsg(seq=8, delivered=4)
        action = await settle_failure(as_msg(msg), REJECTED, dead_letters(broker))
        assert action is Action.RETRY
        assert msg.calls == [("term",)]
        assert [p.subject for p in broker.attempts] == [
            DLQ + "SCHEMA_VIOLATION",
            DLQ + "MAX_DELIVERIES",
        ]
        [letter] = broker.published
        assert letter.body()["detail"].startswith("failed on all 4 deliveries; last error: ")
        assert "PublishError" in letter.body()["detail"]

    async def test_nothing_stored_on_the_last_delivery(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Neither nak nor term: JetStream's MAX_DELIVERIES advisory is the last resort."""
        broker = FakeBroker(refuse_all)
        for failure in (REJECTED, TransientError("busy")):
            msg = FakeMsg(seq=8, delivered=4)
            with caplog.at_level(logging.ERROR, "worker.delivery"):
                assert await settle_failure(as_msg(msg), failure, dead_letters(broker)) is (
                    Action.RETRY
                )
            assert msg.calls == []
        assert caplog.text.count("MAX_DELIVERIES dead letter not stored") == 2

    async def test_retry_directly(self) -> None:
        """``DeadLetters.retry`` raises nothing when the letter fails: it logs and returns."""
        msg = FakeMsg(delivered=4)
        await dead_letters(FakeBroker(refuse_all)).retry(as_msg(msg), ValueError("x"))
        assert msg.calls == []


class TestSettlementFails:
    """A settlement that cannot be sent never raises: the message comes back after ack_wait."""

    @pytest.mark.parametrize(
        ("failure", "action", "calls"),
        [
            (StoreOutageError("EIO"), Action.HAND_BACK, [("nak", None)]),
            (TransientError("busy"), Action.RETRY, [("nak", 0.5)]),
        ],
    )
    async def test_nak_raises(
        self, failure: BaseException, action: Action, calls: list[tuple[object, ...]]
    ) -> None:
        msg = FakeMsg(failing={"nak"})
        assert await settle_failure(as_msg(msg), failure, dead_letters(FakeBroker())) is action
        assert msg.calls == calls

    async def test_term_raises_after_the_letter(self) -> None:
        """The letter is stored, the term is lost: naked for a later delivery (whose letter has
        the same message id, so it is stored once)."""
        broker = FakeBroker()
        msg = FakeMsg(seq=11, failing={"term"})
        action = await settle_failure(as_msg(msg), REJECTED, dead_letters(broker))
        assert action is Action.RETRY
        assert msg.calls == [("term",), ("nak", 0.5)]
        assert [p.headers["Nats-Msg-Id"] for p in broker.published] == ["dlq:RMOS_RUN_EVENTS:11"]

    async def test_term_and_nak_raise(self) -> None:
        msg = FakeMsg(failing={"term", "nak"})
        action = await settle_failure(as_msg(msg), REJECTED, dead_letters(FakeBroker()))
        assert action is Action.RETRY
        assert msg.calls == [("term",), ("nak", 0.5)]

    async def test_term_raises_on_the_last_delivery(self) -> None:
        msg = FakeMsg(delivered=4, failing={"term"})
        broker = FakeBroker()
        action = await settle_failure(as_msg(msg), ValueError("bug"), dead_letters(broker))
        assert action is Action.RETRY
        assert msg.calls == [("term",)]
        assert [p.subject for p in broker.published] == [DLQ + "MAX_DELIVERIES"]


class TestReplyFor:
    """The API answers the same policy instead of settling a message."""

    def test_rejected_is_its_code(self) -> None:
        failure = RejectedError(DeadLetterCode.RUN_ID_CONFLICT, "held by another event")
        assert reply_for(failure) == ("RUN_ID_CONFLICT", "held by another event", False)

    def test_store_down_may_be_retried(self) -> None:
        assert reply_for(StoreOutageError("no space")) == (
            "UNAVAILABLE",
            "store down: no space; try again",
            True,
        )

    def test_a_passing_failure_may_be_retried(self) -> None:
        assert reply_for(TransientError("index locked")) == (
            "UNAVAILABLE",
            "index locked; try again",
            True,
        )

    def test_a_bug_is_no_reply_of_the_policy(self) -> None:
        assert reply_for(KeyError("x")) is None
