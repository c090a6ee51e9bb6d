"""The operator commands over :class:`RunsClient`: ``get``, ``list``, ``diff``, ``verify``,
``attach`` and ``dlq list|replay``.

Each command is an async function ``(client, args, out) -> exit code``. Default output is an
aligned table or a ``key: value`` block; ``--json`` prints the reply objects, one per line for
lists. API errors print ``error CODE: message`` on stderr and exit 2, as do an unreachable server,
a missing worker and a refused replay; ``verify`` exits 1 when the run is invalid.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import hashlib
import json
import mimetypes
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import nats
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from pydantic import ValidationError

from contracts.api import ListFilters, RunSummary
from contracts.models import DeadLetter
from contracts.subjects import Subjects
from worker.client import RunsApiError, RunsClient
from worker.settings import Settings

EXIT_INVALID = 1  # verify: the run does not match its hashes
EXIT_ERROR = 2  # API error, unreachable server, refused command
LIST_COLUMNS = (
    "run_id",
    "created_at_utc",
    "status",
    "risk_level",
    "explanation_status",
    "event_type",
    "mode",
    "tool_id",
    "source",
    "revision",
)
DLQ_COLUMNS = (
    "seq",
    "code",
    "original_subject",
    "stream_seq",
    "deliveries",
    "dead_lettered_at",
    "detail",
)
PAGE_SIZE = 50  # list without --all: the contract's default page
ALL_PAGE_SIZE = 200
CELL_WIDTH = 64  # values wider than this are shortened in tables (a SHA-256 still fits)
DETAIL_WIDTH = 60
ELLIPSIS = "…"


class CommandError(Exception):
    """A command refused or failed for a reason the operator can read (exit 2, no traceback)."""


# --- formatting helpers (pure) ---------------------------------------------------------------


def json_line(obj: Any) -> str:
    """One compact JSON object per line (``--json``)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def cell(value: Any) -> str:
    """A table cell or block value: ``-`` for null, strings as they are, the rest as JSON."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def shorten(text: str, width: int = CELL_WIDTH) -> str:
    """One line (runs of whitespace become one space), cut to ``width`` with an ellipsis."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: max(width - 1, 0)] + ELLIPSIS


def table(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """An aligned text table: upper-case header, two spaces between columns, no trailing blanks."""
    lines = [[column.upper() for column in columns]]
    lines += [[shorten(cell(row.get(column))) for column in columns] for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    return "\n".join(
        "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Leaves of nested objects and lists as ``(dotted.path, value)``, as ``diff`` names paths."""
    if isinstance(value, dict) and value:
        items: Iterable[tuple[Any, Any]] = value.items()
    elif isinstance(value, list) and value:
        items = enumerate(value)
    else:
        return [(prefix, value)]
    pairs: list[tuple[str, Any]] = []
    for key, child in items:
        pairs += flatten(child, f"{prefix}.{key}" if prefix else str(key))
    return pairs


def key_values(pairs: Iterable[tuple[str, Any]]) -> str:
    """A ``key: value`` block with the values aligned."""
    pairs = list(pairs)
    width = max((len(key) for key, _ in pairs), default=0) + 1
    return "\n".join(f"{key + ':':<{width}} {cell(value)}".rstrip() for key, value in pairs)


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


# --- commands ----------------------------------------------------------------------------------


def _emit(out: TextIO, text: str) -> None:
    out.write(text + "\n")


def _note(text: str) -> None:
    sys.stderr.write(text + "\n")


async def get(client: RunsClient, args: argparse.Namespace, out: TextIO) -> int:
    run = await client.get(args.run_id)
    _emit(out, json_line(run) if args.json else key_values(flatten(run)))
    return 0


def list_filters(args: argparse.Namespace) -> dict[str, Any]:
    """The ``list`` filters given on the command line (every filter of the contract)."""
    return {
        name: getattr(args, name)
        for name in ListFilters.model_fields
        if getattr(args, name, None) is not None
    }


async def _one_page(
    client: RunsClient, args: argparse.Namespace, filters: dict[str, Any]
) -> AsyncIterator[dict[str, Any]]:
    limit = PAGE_SIZE if args.limit is None else args.limit
    page = await client.list_page(limit=limit, cursor=args.cursor, **filters)
    for item in page.items:
        yield item.model_dump()
    if page.next_cursor is not None:
        _note(f"more runs: --all, or --cursor {page.next_cursor}")


async def list_runs(client: RunsClient, args: argparse.Namespace, out: TextIO) -> int:
    filters = list_filters(args)
    if args.all:
        page_size = ALL_PAGE_SIZE if args.limit is None else args.limit
        items = _dumped(client.iter_runs(page_size=page_size, **filters))
    else:
        items = _one_page(client, args, filters)
    rows = []
    async for item in items:
        if args.json:
            _emit(out, json_line(item))  # streamed: --all --json needs no memory
        else:
            rows.append(item)
    if not args.json:
        _emit(out, table(rows, LIST_COLUMNS))
    return 0


async def _dumped(summaries: AsyncIterator[RunSummary]) -> AsyncIterator[dict[str, Any]]:
    async for summary in summaries:
        yield summary.model_dump()


async def diff(client: RunsClient, args: argparse.Namespace, out: TextIO) -> int:
    reply = (await client.diff(args.a, args.b)).model_dump()
    if args.json:
        _emit(out, json_line(reply))
        return 0
    head = [(key, reply.get(key)) for key in ("a", "b", "severity")]
    _emit(out, key_values([*head, ("changes", len(reply["changes"]))]))
    if reply["changes"]:
        _emit(out, "\n" + table(reply["changes"], ("path", "a", "b")))
    return 0


async def verify(client: RunsClient, args: argparse.Namespace, out: TextIO) -> int:
    reply = (await client.verify(args.run_id)).model_dump()
    if args.json:
        _emit(out, json_line(reply))
    else:
        _emit(out, key_values([("run_id", reply["run_id"]), ("valid", reply["valid"])]))
        _emit(out, "\n" + table(reply["checks"], ("name", "ok", "expected", "actual")))
    return 0 if reply["valid"] else EXIT_INVALID


def attachment_meta(path: Path, mime: str | None, filename: str | None) -> tuple[str, str]:
    """The mime type (guessed from the file name when not given) and the file name to store."""
    guessed = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return mime or guessed, filename or path.name


async def attach(client: RunsClient, args: argparse.Namespace, out: TextIO) -> int:
    path = Path(args.file)
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from exc
    mime, filename = attachment_meta(path, args.mime, args.filename)
    reply = await client.put_attachment(data, kind=args.kind, mime=mime, filename=filename)
    ref = {  # an ``attachments`` entry of a run event, ready to use
        "sha256": reply.sha256,
        "kind": args.kind,
        "mime": mime,
        "filename": filename,
        "size_bytes": reply.size_bytes,
    }
    _emit(out, json_line(ref) if args.json else key_values(ref.items()))
    return 0


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
            _emit(out, json_line({"seq": seq, **body}))
    else:
        _emit(out, table([dead_letter_row(seq, body) for seq, body in letters], DLQ_COLUMNS))
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
            _emit(out, json_line(row))
        rows.append(row)
    if not args.json:
        _emit(out, table(rows, ("dlq_seq", "subject", "stream", "seq", "duplicate")))
    return 0


Handler = Callable[[RunsClient, argparse.Namespace, TextIO], Awaitable[int]]
HANDLERS: dict[str, Handler] = {
    "get": get,
    "list": list_runs,
    "diff": diff,
    "verify": verify,
    "attach": attach,
    "dlq list": dlq_list,
    "dlq replay": dlq_replay,
}


# --- running one command -----------------------------------------------------------------------


async def connect(settings: Settings, timeout: float) -> RunsClient:
    """A client that fails fast: a CLI must not wait forever for a server that is not there."""
    from worker.runner import resolve_url  # imported late: the worker's modules are heavy

    try:
        url = resolve_url(settings)
    except SystemExit as exc:
        raise CommandError(str(exc.code)) from None
    errors: list[Exception] = []

    async def remember(exc: Exception) -> None:
        errors.append(exc)

    try:
        nc = await asyncio.wait_for(
            nats.connect(
                url,
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.2,
                connect_timeout=timeout,
                error_cb=remember,
            ),
            timeout * 2,
        )
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        reason = errors[-1] if errors else exc
        raise CommandError(f"cannot reach NATS at {url}: {reason}") from None
    return RunsClient(nc, settings.subjects, timeout)


def describe(exc: BaseException, subjects: Subjects) -> str | None:
    """The one line an operator sees for an expected failure; None for a bug (traceback)."""
    if isinstance(exc, BrokenPipeError):  # the reader went away: handled by :func:`run`
        return None
    if isinstance(exc, RunsApiError):
        return f"error {exc.code}: {exc.message}"
    if isinstance(exc, CommandError):
        return f"error: {exc}"
    if isinstance(exc, nats.errors.NoRespondersError):
        return (
            f"error: nothing answers on {subjects.api}.*: is `rmos-runs worker` running "
            "(with the same RMOS_SUBJECT_PREFIX)?"
        )
    if isinstance(exc, TimeoutError):
        return "error: no reply in time (--timeout)"
    if isinstance(exc, nats.errors.Error | OSError):
        return f"error: NATS: {exc}"
    return None


async def execute(
    handler: Handler, args: argparse.Namespace, settings: Settings, out: TextIO
) -> int:
    """Connect, run one command, close; expected failures become one line and exit 2."""
    try:
        async with await connect(settings, args.timeout) as client:
            return await handler(client, args, out)
    except Exception as exc:
        message = describe(exc, settings.subjects)
        if message is None:
            raise
        _note(message)
        return EXIT_ERROR


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Entry point from the CLI: ``args.action`` names the command."""
    try:
        return asyncio.run(execute(HANDLERS[args.action], args, settings, sys.stdout))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # ``rmos-runs list --all | head``: not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
