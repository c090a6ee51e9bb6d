"""The operator commands over :class:`RunsClient`: ``get``, ``list``, ``diff``, ``verify``,
``attach``, and ``dlq list|replay`` (in ``worker.dlq``).

Each command is an async function ``(client, args, out) -> exit code``. Default output is an
aligned table or a ``key: value`` block; ``--json`` prints the reply objects, one per line for
lists. API errors print ``error CODE: message`` on stderr and exit 3, as do a missing worker and
a refused replay; an unreachable server exits 4; ``verify`` exits 1 when the run is invalid
(``worker.output.Exit``).
"""

from __future__ import annotations

import argparse
import asyncio
import mimetypes
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TextIO

import nats.errors
import nats.js.errors
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from contracts.api import ListFilters, RunSummary, VerifyReport
from contracts.subjects import Subjects
from contracts.transparency import (
    Checkpoint,
    consistency_valid,
    inclusion_valid,
    key_id,
    leaf_hash,
    signature_valid,
)
from worker.client import RunsApiError, RunsClient
from worker.connection import ConnectError
from worker.core.verify import Check
from worker.dlq import dlq_list, dlq_replay
from worker.output import (
    CommandError,
    Exit,
    UsageError,
    emit,
    flatten,
    json_line,
    key_values,
    note,
    table,
)
from worker.settings import Settings
from worker.signing import SigningKeyError, load_public

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
PAGE_SIZE = 50  # list without --all: the contract's default page
ALL_PAGE_SIZE = 200


# --- commands ----------------------------------------------------------------------------------


async def get(client: RunsClient, args: argparse.Namespace, out: TextIO) -> int:
    run = await client.get(args.run_id)
    emit(out, json_line(run) if args.json else key_values(flatten(run)))
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
        note(f"more runs: --all, or --cursor {page.next_cursor}")


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
            emit(out, json_line(item))  # streamed: --all --json needs no memory
        else:
            rows.append(item)
    if not args.json:
        emit(out, table(rows, LIST_COLUMNS))
    return 0


async def _dumped(summaries: AsyncIterator[RunSummary]) -> AsyncIterator[dict[str, Any]]:
    async for summary in summaries:
        yield summary.model_dump()


async def diff(client: RunsClient, args: argparse.Namespace, out: TextIO) -> int:
    reply = (await client.diff(args.a, args.b)).model_dump()
    if args.json:
        emit(out, json_line(reply))
        return 0
    head = [(key, reply.get(key)) for key in ("a", "b", "severity")]
    emit(out, key_values([*head, ("changes", len(reply["changes"]))]))
    if reply["changes"]:
        emit(out, "\n" + table(reply["changes"], ("path", "a", "b")))
    return 0


async def verify(client: RunsClient, args: argparse.Namespace, out: TextIO) -> int:
    report = await client.verify(args.run_id)
    reply = report.model_dump()
    if args.public_key is not None:  # the proof checked here, not only by the worker
        reply["checks"] += [
            c.as_dict() for c in proof_checks(report, _public_key(args), args.run_id)
        ]
        reply["valid"] = all(check["ok"] for check in reply["checks"])
    if args.json:
        emit(out, json_line(reply))
    else:
        emit(out, key_values([("run_id", reply["run_id"]), ("valid", reply["valid"])]))
        emit(out, "\n" + table(reply["checks"], ("name", "ok", "expected", "actual")))
    return Exit.OK if reply["valid"] else Exit.FAILED


def proof_checks(report: VerifyReport, public: Ed25519PublicKey, run_id: str) -> list[Check]:
    """``proof.signature`` and ``proof.inclusion`` (CONTRACT 9.6, steps 2 and 3): the reply's
    checkpoint signed by ``public``, and a leaf of ``run_id`` whose hash, recomputed here, is
    the reply's ``leaf_hash`` and is in that checkpoint's tree (of the reply's ``tree_size``)."""
    if report.log is None:
        return [Check("proof.inclusion", False, "a leaf in the log", "none")]
    proof = report.log
    checkpoint = Checkpoint.model_validate(proof.checkpoint)
    signed = signature_valid(checkpoint, public)
    wrong = [
        what
        for what, bad in (
            (f"a leaf of {proof.leaf.get('run_id')}", proof.leaf.get("run_id") != run_id),
            ("a leaf_hash that is not the leaf's", leaf_hash(proof.leaf).hex() != proof.leaf_hash),
            (f"tree_size {proof.tree_size}", proof.tree_size != checkpoint.tree_size),
        )
        if bad
    ]
    if not wrong and not inclusion_valid(
        proof.leaf, proof.leaf_index, proof.inclusion_proof, checkpoint
    ):
        wrong.append("no path to the root")
    actual = "; ".join(wrong) if wrong else f"leaf {proof.leaf_index}"
    return [
        Check("proof.signature", signed, key_id(public), checkpoint.key_id),
        Check("proof.inclusion", not wrong, checkpoint.root_hash, actual),
    ]


def _public_key(args: argparse.Namespace) -> Ed25519PublicKey:
    try:
        return load_public(args.public_key)
    except SigningKeyError as exc:
        raise UsageError(str(exc)) from None


async def checkpoint(client: RunsClient, args: argparse.Namespace, out: TextIO) -> int:
    """Print the latest checkpoint (one JSON line: save it to audit against later); with
    ``--public-key`` check its signature, with ``--since FILE`` that it extends a saved one."""
    from worker.audit import saved_checkpoints

    latest = await client.log_checkpoint()
    problems = []
    if args.public_key is not None and not signature_valid(latest, _public_key(args)):
        problems.append(f"checkpoint {latest.tree_size} is not signed by {args.public_key}")
    for older in saved_checkpoints(args.since):
        if older.tree_size > latest.tree_size:
            problems.append(
                f"the log shrank: {older.tree_size} leaves before, {latest.tree_size} now"
            )
            continue
        proof = await client.log_consistency(older.tree_size, latest.tree_size)
        if not consistency_valid(older, latest, proof.proof):
            problems.append(
                f"the log of {latest.tree_size} leaves does not extend checkpoint {older.tree_size}"
            )
    emit(out, json_line(latest.as_dict()))
    for problem in problems:
        note(f"error: {problem}")
    return Exit.FAILED if problems else Exit.OK


async def history(client: RunsClient, args: argparse.Namespace, out: TextIO) -> int:
    revisions = [r.model_dump() for r in (await client.history(args.run_id)).revisions]
    if args.json:
        for revision in revisions:
            emit(out, json_line(revision))
    else:
        emit(out, table(revisions, ("revision", "at", "change", "by", "changed")))
    return 0


def attachment_meta(path: Path, mime: str | None, filename: str | None) -> tuple[str, str]:
    """The mime type (guessed from the file name when not given) and the file name to store."""
    guessed = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return mime or guessed, filename or path.name


async def attach(client: RunsClient, args: argparse.Namespace, out: TextIO) -> int:
    path = Path(args.file)
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    mime, filename = attachment_meta(path, args.mime, args.filename)
    reply = await client.put_attachment(data, kind=args.kind, mime=mime, filename=filename)
    ref = {  # an ``attachments`` entry of a run event, ready to use
        "sha256": reply.sha256,
        "kind": args.kind,
        "mime": mime,
        "filename": filename,
        "size_bytes": reply.size_bytes,
    }
    emit(out, json_line(ref) if args.json else key_values(ref.items()))
    return 0


Handler = Callable[[RunsClient, argparse.Namespace, TextIO], Awaitable[int]]
HANDLERS: dict[str, Handler] = {
    "get": get,
    "list": list_runs,
    "diff": diff,
    "verify": verify,
    "checkpoint": checkpoint,
    "history": history,
    "attach": attach,
    "dlq list": dlq_list,
    "dlq replay": dlq_replay,
}


# --- running one command -----------------------------------------------------------------------


async def connect(settings: Settings, timeout: float) -> RunsClient:
    """A client that fails fast: a CLI must not wait forever for a server that is not there.
    Each server is tried twice, 0.2 s apart, each attempt bounded by ``timeout``, the whole by
    ``RMOS_CONNECT_TIMEOUT_S`` and ``2 × timeout``; once connected, a lost connection is not
    re-established (the command fails)."""
    from worker.runner import resolve_url  # imported late: the worker's modules are heavy

    try:
        url = resolve_url(settings)
    except SystemExit as exc:
        raise UsageError(str(exc.code)) from None
    client = await RunsClient.from_settings(  # ConnectError: one line and exit 4 (``execute``)
        settings,
        "cli",
        url=url,
        timeout=timeout,
        connect_timeout=min(settings.connect_timeout_s, 2 * timeout),
        max_reconnect_attempts=1,  # per server, then nats-py gives up by itself
        reconnect_time_wait=0.2,
    )
    client.nc.options["allow_reconnect"] = False  # not at connect: a TLS failure hangs close()
    return client


def describe(exc: BaseException, subjects: Subjects) -> str | None:
    """The one line an operator sees for an expected failure; None for a bug (traceback)."""
    if isinstance(exc, BrokenPipeError):  # the reader went away: handled by :func:`run`
        return None
    if isinstance(exc, RunsApiError):
        return f"error {exc.code}: {exc.message}"
    if isinstance(exc, CommandError | ConnectError):
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


def exit_code(exc: BaseException) -> Exit:
    """NATS out of reach (never reached, or lost) or the request failed."""
    if isinstance(exc, UsageError):
        return Exit.USAGE
    lost = (ConnectError, nats.errors.ConnectionClosedError, nats.errors.NoServersError, OSError)
    return Exit.UNREACHABLE if isinstance(exc, lost) else Exit.API_ERROR


async def execute(
    handler: Handler, args: argparse.Namespace, settings: Settings, out: TextIO
) -> int:
    """Connect, run one command, close; expected failures become one line and an exit code."""
    try:
        async with await connect(settings, args.timeout) as client:
            return await handler(client, args, out)
    except Exception as exc:
        message = describe(exc, settings.subjects)
        if message is None:
            raise
        note(message)
        return exit_code(exc)


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
