"""Dead-letter bodies and retry delays, as pure functions."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime

import pytest

from contracts.models import DeadLetter
from worker.core.dead_letter import PAYLOAD_KEEP, dead_letter, dead_letter_msg_id
from worker.delivery import nak_delay
from worker.settings import Settings

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def letter(payload: bytes, detail: str = "why") -> dict[str, object]:
    return dead_letter(
        code="INVALID_JSON",
        detail=detail,
        subject="rmos.runs.v1.events.a",
        headers={"Nats-Msg-Id": "a:1"},
        payload=payload,
        stream_seq=7,
        deliveries=1,
        now=NOW,
    ).model_dump(by_alias=True)


class TestDeadLetter:
    """The body of CONTRACT section 7."""

    def test_small_payload_kept_whole(self) -> None:
        """A small payload travels whole, and the body validates against the contract model."""
        body = letter(b"{oops")
        DeadLetter.model_validate(body)
        assert base64.b64decode(str(body["payload_b64"])) == b"{oops"
        assert body["payload_truncated"] is False
        assert body["dead_lettered_at"] == "2026-11-24T10:00:00.000000+00:00"

    @pytest.mark.parametrize("size", [PAYLOAD_KEEP, PAYLOAD_KEEP + 1, 600_000])
    def test_large_payload_truncated(self, size: int) -> None:
        """Past 64 KiB only the head is kept; size and hash are always of the whole."""
        payload = bytes(i % 251 for i in range(size))
        body = letter(payload)
        kept = base64.b64decode(str(body["payload_b64"]))
        assert kept == payload[:PAYLOAD_KEEP]
        assert body["payload_truncated"] is (size > PAYLOAD_KEEP)
        assert body["payload_size"] == size
        assert body["payload_sha256"] == hashlib.sha256(payload).hexdigest()

    def test_detail_bounded(self) -> None:
        """The detail never exceeds 4 KB."""
        assert len(str(letter(b"x", detail="e" * 10_000)["detail"])) <= 4096

    def test_msg_id(self) -> None:
        """The message id makes a dead letter sent twice stored once."""
        assert dead_letter_msg_id("RMOS_RUN_EVENTS", 7, b"x") == "dlq:RMOS_RUN_EVENTS:7"


class TestNakDelay:
    """Retries back off exponentially, capped."""

    def test_doubles_then_caps(self) -> None:
        """0.5, 1, 2, 4 ... seconds, never above the cap."""
        settings = Settings(nak_base_delay_s=0.5, nak_max_delay_s=3)
        assert [nak_delay(n, settings) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
