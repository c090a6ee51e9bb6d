"""The body and message id of a dead letter (CONTRACT section 7)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from datetime import datetime

from contracts.models import DeadLetter
from worker.core.timefmt import utc_text
from worker.errors import DETAIL_LIMIT

PAYLOAD_KEEP = 64 * 1024


def dead_letter(
    *,
    code: str,
    detail: str,
    subject: str,
    headers: Mapping[str, str],
    payload: bytes,
    stream_seq: int | None,
    deliveries: int | None,
    now: datetime,
) -> DeadLetter:
    """What goes on ``dlq.<code>``: the reason, and the payload (its first 64 KiB) to replay."""
    return DeadLetter(
        schema="rmos.dead_letter.v1",
        code=code,
        detail=detail[:DETAIL_LIMIT],
        original_subject=subject,
        original_headers=dict(headers),
        payload_b64=base64.b64encode(payload[:PAYLOAD_KEEP]).decode("ascii"),
        payload_truncated=len(payload) > PAYLOAD_KEEP,
        payload_size=len(payload),
        payload_sha256=hashlib.sha256(payload).hexdigest(),
        stream_seq=stream_seq,
        deliveries=deliveries,
        dead_lettered_at=utc_text(now),
    )


def dead_letter_msg_id(stream: str, stream_seq: int | None, payload: bytes) -> str:
    """``dlq:<stream>:<seq>``, so that a dead letter sent twice is stored once."""
    if stream_seq is None:  # not from a stream: the payload itself is the identity
        return f"dlq:{stream}:sha256-{hashlib.sha256(payload).hexdigest()}"
    return f"dlq:{stream}:{stream_seq}"
