"""``rmos-runs dlq list|replay``: read the dead-letter stream, and publish chosen letters again.

A replay re-sends the original payload to its original subject once its cause is fixed (say,
the missing attachment is stored now). It refuses what cannot be replayed faithfully.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TextIO

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from pydantic import ValidationError

from contracts.models import DeadLetter
from contracts.subjects import Subjects
from worker.client import RunsClient
from worker.output import CommandError, emit, json_line, shorten, table

DLQ_COLUMNS = (
    "seq",
    "code",
    "original_subject",
    "stream_seq",
    "deliveries",
    "dead_lettered_at",
    "detail",
)
DETAIL_WIDTH = 60


def dead_letter_row(seq: int, body: Mapping[str, Any]) -> dict[str, Any]:
    """What ``dlq list`` shows of one dead letter (the detail on one shortened line)."""
    row = {column: body.get(column) for column in DLQ_COLUMNS}
    row["seq"] = seq
    row["detail"] = shorten(str(body.get("detail", "")), DETAIL_WIDTH)
    return row


@dataclass(frozen=True)
class Replay:
    """One dead letter, ready to be published again."""

    dlq_seq: int
    subject: str
    payload: bytes
    headers: dict[str, str]


def replay_plan(dlq_seq: int, letter: DeadLetter, subjects: Subjects, dlq_stream: str) -> Replay:
    """The message to re-publish, or :class:`CommandError` when it cannot be replayed as is.

    The original ``Nats-*`` headers are dropped (JetStream would take the old ``Nats-Msg-Id`` for
    a duplicate); ``Nats-Msg-Id: replay:<dlq seq>`` makes a replay sent twice stored once.
    """
    if letter.payload_truncated:
        raise CommandError(
            f"dead letter {dlq_seq} holds only the first bytes of its {letter.payload_size}-byte "
            "payload (payload_truncated): it cannot be replayed"
        )
    consumed = (f"{subjects.events}.", f"{subjects.explain}.patch.")  # what the worker reads
    if not letter.original_subject.startswith(consumed):
        raise CommandError(
            f"dead letter {dlq_seq}: {letter.original_subject!r} is not an event or patch subject "
            f"of this deployment ({subjects.root})"
        )
    try:
        payload = base64.b64decode(letter.payload_b64, validate=True)
    except binascii.Error as exc:
        raise CommandError(f"dead letter {dlq_seq}: payload_b64 is not base64 ({exc})") from exc
    if hashlib.sha256(payload).hexdigest() != letter.payload_sha256:
        raise CommandError(f"dead letter {dlq_seq}: payload does not match payload_sha256")
    headers = {
        key: value
        for key, value in letter.original_headers.items()
        if not key.lower().startswith("nats-")
    }
    headers["Nats-Msg-Id"] = f"replay:{dlq_seq}"
    headers["Rmos-Replay-Of"] = f"{dlq_stream}:{dlq_seq}"
    return Replay(dlq_seq, letter.original_subject, payload, headers)


async def _msg_at(js: JetStreamContext, stream: str, seq: int) -> RawStreamMsg | None:
    try:
        return await js.get_msg(stream, seq)
    except nats.js.errors.NotFoundError:  # deleted, or aged out
        return None


async def recent_messages(
    js: JetStreamContext, stream: str, subject: str | None, limit: int
) -> list[RawStreamMsg]:
    """The newest ``limit`` messages of ``stream`` (on ``subject`` when given), newest first."""
    try:
        info = await js.stream_info(stream, subjects_filter=subject)
    except nats.js.errors.NotFoundError:
        return []  # no worker ever declared it: nothing was dead-lettered
    state = info.state
    wanted = min(limit, (state.subjects or {}).get(subject, 0) if subject else state.messages)
    found: list[RawStreamMsg] = []
    seq = state.last_seq
    while len(found) < wanted and seq >= max(state.first_seq, 1):
        msg = await _msg_at(js, stream, seq)
        if msg is not None and (subject is None or msg.subject == subject):
            found.append(msg)
        seq -= 1
    return found


async def dlq_list(client: RunsClient, args: argparse.Namespace, out: TextIO) -> int:
    subjects = client.subjects
    code = subjects.dead_letter(args.code) if args.code else None
    js = client.nc.jetstream(timeout=client.timeout)
    msgs = await recent_messages(js, subjects.dlq_stream, code, args.limit)
    letters = [(msg.seq or 0, json.loads(msg.data or b"{}")) for msg in msgs]
    if args.json:
        for seq, body in letters:
            emit(out, json_line({"seq": seq, **body}))
    else:
        emit(out, table([dead_letter_row(seq, body) for seq, body in letters], DLQ_COLUMNS))
    return 0


async def _dead_letter(js: JetStreamContext, stream: str, seq: int) -> DeadLetter:
    msg = await _msg_at(js, stream, seq)
    if msg is None:
        raise CommandError(f"no dead letter {seq} in {stream}")
    try:
        return DeadLetter.model_validate_json(msg.data or b"")
    except ValidationError as exc:
        raise CommandError(f"message {seq} of {stream} is not a dead letter: {exc}") from exc


async def dlq_replay(client: RunsClient, args: argparse.Namespace, out: TextIO) -> int:
    stream = client.subjects.dlq_stream
    js = client.nc.jetstream(timeout=client.timeout)
    seqs = list(dict.fromkeys(args.seqs))
    # every chosen letter is checked before anything is published: all or nothing refused
    letters = [(seq, await _dead_letter(js, stream, seq)) for seq in seqs]
    plans = [replay_plan(seq, letter, client.subjects, stream) for seq, letter in letters]
    rows = []
    for plan in plans:
        ack = await js.publish(
            plan.subject, plan.payload, headers=plan.headers, timeout=client.timeout
        )
        row = {
            "dlq_seq": plan.dlq_seq,
            "subject": plan.subject,
            "stream": ack.stream,
            "seq": ack.seq,
            "duplicate": bool(ack.duplicate),
        }
        if args.json:
            emit(out, json_line(row))
        rows.append(row)
    if not args.json:
        emit(out, table(rows, ("dlq_seq", "subject", "stream", "seq", "duplicate")))
    return 0
