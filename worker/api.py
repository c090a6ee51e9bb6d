"""Request–reply endpoints on ``rmos.runs.v1.api.<op>``: every request gets exactly one reply.

Handlers take raw bytes and validate by hand: a FastStream handler typed with a model sends no
reply at all when validation fails, and the contract promises ``INVALID_REQUEST`` instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prometheus_client import Counter, Histogram
from pydantic import BaseModel, ValidationError

from contracts.api import (
    ERROR_HEADER,
    FILENAME_HEADER,
    KIND_HEADER,
    MAX_LEAVES,
    MIME_HEADER,
    SHA256_HEADER,
    BlobHeaders,
    BlobRequest,
    BlobStored,
    CheckpointReply,
    ConsistencyProof,
    CreateResult,
    DiffRequest,
    DiffResult,
    ExplainRequest,
    ExplainResult,
    GetRequest,
    History,
    LeafRange,
    ListPage,
    ListRequest,
    LogCheckpointRequest,
    LogConsistencyRequest,
    LogLeavesRequest,
    MetaPatched,
    PatchMetaRequest,
    VerifyReport,
    error_reply,
    ok_reply,
)
from contracts.canonical import CanonicalError, parse_json
from contracts.codes import ApiErrorCode
from contracts.models import parse_timestamp
from worker.core.cursor import CursorError, decode_cursor, encode_cursor
from worker.core.diff import diff_runs
from worker.core.ingest import describe_errors
from worker.core.meta import MetaPatchError, apply_meta_patch, check_meta_patch
from worker.core.timefmt import utc_now, utc_text
from worker.delivery import reply_for
from worker.errors import (
    RejectedError,
    RevisionConflictError,
)
from worker.explanations import Explanations
from worker.intake import Delivery, Intake, Stored
from worker.logs import fields
from worker.metrics import API_REQUESTS, API_SECONDS
from worker.proofs import LogRequestError, Proofs
from worker.store.base import Change, Query, RunStore

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)
JSON = {"content-type": "application/json"}


@dataclass(frozen=True, slots=True)
class Reply:
    body: bytes
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))


class BadRequestError(Exception):
    """A request the API refuses with a contract error code."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(message)


def parse_request(model: type[M], body: bytes) -> M:
    """A validated request, or ``INVALID_REQUEST`` naming what is wrong."""
    try:
        data = parse_json(body)
    except CanonicalError as exc:
        raise BadRequestError(ApiErrorCode.INVALID_REQUEST, f"not JSON: {exc}") from None
    return validate(model, data)


def validate(model: type[M], data: object) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadRequestError(ApiErrorCode.INVALID_REQUEST, describe_errors(exc)) from None


Handler = Callable[[bytes, Mapping[str, str]], Awaitable[Reply]]


def _ok(model: type[BaseModel], **fields: Any) -> Reply:
    """A success reply, checked against its contract model (``contracts.api``): the fields it
    documents and no other, each of its type. A mismatch is our bug: INTERNAL, logged."""
    undocumented = fields.keys() - model.model_fields.keys()
    if undocumented:
        raise TypeError(f"{model.__name__} does not document {sorted(undocumented)}")
    model.model_validate(fields)
    return Reply(ok_reply(**fields))


class Api:
    """Dispatches ``api.<op>`` requests to the store and the ingest path."""

    def __init__(
        self,
        store: RunStore,
        intake: Intake,
        explanations: Explanations,
        proofs: Proofs,
        *,
        max_blob_bytes: int,
    ) -> None:
        self._store = store
        self._intake = intake
        self._explanations = explanations
        self._proofs = proofs
        self._max_blob_bytes = max_blob_bytes
        self._ops: dict[str, Handler] = {
            "get": self.get,
            "create": self.create,
            "list": self.list_page,
            "diff": self.diff,
            "verify": self.verify,
            "patch_meta": self.patch_meta,
            "explain": self.explain,
            "history": self.history,
            "attachments.put": self.put_attachment,
            "attachments.get": self.get_attachment,
            "log.checkpoint": self.log_checkpoint,
            "log.consistency": self.log_consistency,
            "log.leaves": self.log_leaves,
        }
        # Bound metric children, looked up once: by op, and by (op, code) as codes are met.
        self._seconds: dict[str, Histogram] = {
            op: API_SECONDS.labels(op) for op in (*self._ops, "unknown")
        }
        self._answered: dict[tuple[str, str], Counter] = {}

    async def handle(self, op: str, body: bytes, headers: Mapping[str, str]) -> Reply:
        """The reply to one request; never raises."""
        started = time.perf_counter()
        reply = await self._handle(op, body, headers)
        known = op if op in self._ops else "unknown"
        self._seconds[known].observe(time.perf_counter() - started)
        key = (known, reply.headers.get(ERROR_HEADER, "ok"))
        answered = self._answered.get(key)
        if answered is None:
            answered = self._answered[key] = API_REQUESTS.labels(*key)
        answered.inc()
        return reply

    async def _handle(self, op: str, body: bytes, headers: Mapping[str, str]) -> Reply:
        handler = self._ops.get(op)
        try:
            if handler is None:
                known = ", ".join(sorted(self._ops))
                raise BadRequestError(
                    ApiErrorCode.INVALID_REQUEST, f"unknown op {op!r}; known: {known}"
                )
            return await handler(body, headers)
        except BadRequestError as exc:
            return _error(exc.code, exc.message)
        except LogRequestError as exc:
            return _error(ApiErrorCode.INVALID_REQUEST, str(exc))
        except RevisionConflictError as exc:
            return _error(
                ApiErrorCode.REVISION_CONFLICT, str(exc), expected=exc.expected, actual=exc.actual
            )
        except Exception as exc:
            reply = reply_for(exc)  # the delivery policy: rejected, store down, may pass
            if reply is not None:
                code, message, retryable = reply
                return _error(code, message, **({"retryable": True} if retryable else {}))
            log.exception("api.%s failed", op, extra=fields(op=op))
            return _error(ApiErrorCode.INTERNAL, "internal error; see the worker's log")

    async def get(self, body: bytes, headers: Mapping[str, str]) -> Reply:
        request = parse_request(GetRequest, body)
        # the artifact exactly as stored (validated when it was made), so its hashes recompute
        return Reply(ok_reply(run=await self._run(request.run_id)))

    async def list_page(self, body: bytes, headers: Mapping[str, str]) -> Reply:
        """A page of summaries, newest first, and the cursor of the next page (or null)."""
        request = parse_request(ListRequest, body)
        filters = request.filters()
        try:
            after = decode_cursor(request.cursor, filters) if request.cursor else None
        except CursorError as exc:
            raise BadRequestError(ApiErrorCode.INVALID_REQUEST, f"cursor: {exc}") from None
        rows = await self._store.list_runs(to_query(request, after))
        items = rows[: request.limit]
        next_cursor = None
        if len(rows) > request.limit:
            last = items[-1]
            next_cursor = encode_cursor(last["created_at_utc"], last["run_id"], filters)
        return _ok(ListPage, items=items, next_cursor=next_cursor)

    async def _run(self, run_id: str) -> dict[str, Any]:
        run = await self._store.get_run(run_id)
        if run is None:
            raise BadRequestError(ApiErrorCode.RUN_NOT_FOUND, f"no run {run_id}")
        return run

    async def diff(self, body: bytes, headers: Mapping[str, str]) -> Reply:
        """What differs between two runs' immutable cores, and how much it matters."""
        request = parse_request(DiffRequest, body)
        a, b = await self._run(request.a), await self._run(request.b)
        return _ok(DiffResult, a=request.a, b=request.b, **diff_runs(a, b))

    async def verify(self, body: bytes, headers: Mapping[str, str]) -> Reply:
        """Recompute every hash from the stored bytes, never from a cache, and hold the run
        against its leaves in the Merkle log, with the proof of its current revision."""
        request = parse_request(GetRequest, body)
        report = await self._store.verify_run(request.run_id)
        if report is None:
            raise BadRequestError(ApiErrorCode.RUN_NOT_FOUND, f"no run {request.run_id}")
        log_checks, proof = await self._proofs.run_log(request.run_id)
        checks = [check.as_dict() for check in (*report, *log_checks)]
        valid = all(check["ok"] for check in checks)
        return _ok(VerifyReport, run_id=request.run_id, valid=valid, checks=checks, log=proof)

    async def log_checkpoint(self, body: bytes, headers: Mapping[str, str]) -> Reply:
        """The latest signed checkpoint of the Merkle log."""
        parse_request(LogCheckpointRequest, body or b"{}")
        checkpoint = await self._proofs.checkpoint()
        return _ok(CheckpointReply, checkpoint=checkpoint.as_dict())

    async def log_consistency(self, body: bytes, headers: Mapping[str, str]) -> Reply:
        """A proof that the tree of ``first`` leaves is a prefix of the tree of ``second``."""
        request = parse_request(LogConsistencyRequest, body)
        return _ok(
            ConsistencyProof, **await self._proofs.consistency(request.first, request.second)
        )

    async def log_leaves(self, body: bytes, headers: Mapping[str, str]) -> Reply:
        """A range of the log's leaves, for auditors."""
        request = parse_request(LogLeavesRequest, body)
        found = await self._proofs.leaves(request.start, request.end, MAX_LEAVES)
        return _ok(LeafRange, **found)

    async def patch_meta(self, body: bytes, headers: Mapping[str, str]) -> Reply:
        """Set or (with null) remove meta keys; a compare-and-swap when a revision is expected."""
        request = parse_request(PatchMetaRequest, body)
        updates = request.meta_updates

        def decide(current: dict[str, Any]) -> Change | None:
            meta = apply_meta_patch(current.get("meta", {}), updates)
            if meta is None:
                return None  # nothing to change: no new revision
            return Change({"meta": meta}, change="meta", by="api.patch_meta")

        try:
            check_meta_patch(updates)  # before the run is read: refused whatever the run holds
            result = await self._store.update_run(
                request.run_id, decide, expected_revision=request.expected_revision
            )
        except MetaPatchError as exc:
            raise BadRequestError(ApiErrorCode.INVALID_REQUEST, str(exc)) from None
        if result is None:
            raise BadRequestError(ApiErrorCode.RUN_NOT_FOUND, f"no run {request.run_id}")
        run, _ = result
        return _ok(MetaPatched, run_id=request.run_id, meta=run["meta"], revision=run["revision"])

    async def explain(self, body: bytes, headers: Mapping[str, str]) -> Reply:
        """Request an explanation (NONE), or a new one with ``force``; else the current state."""
        request = parse_request(ExplainRequest, body)
        result = await self._explanations.transition(
            request.run_id, self._explanations.request(request.force), by="api.explain"
        )
        if result is None:
            raise BadRequestError(ApiErrorCode.RUN_NOT_FOUND, f"no run {request.run_id}")
        run, _ = result
        return _ok(
            ExplainResult,
            run_id=request.run_id,
            request_id=run.get("explanation_request_id"),
            explanation_status=run["explanation_status"],
        )

    async def history(self, body: bytes, headers: Mapping[str, str]) -> Reply:
        """Every revision of a run, oldest first."""
        request = parse_request(GetRequest, body)
        revisions = await self._store.history(request.run_id)
        if revisions is None:
            raise BadRequestError(ApiErrorCode.RUN_NOT_FOUND, f"no run {request.run_id}")
        return _ok(History, run_id=request.run_id, revisions=revisions)

    async def create(self, body: bytes, headers: Mapping[str, str]) -> Reply:
        """The ingest path with a reply instead of a dead letter."""
        [outcome] = await self._intake.ingest([Delivery(body, None, utc_now())])
        if isinstance(outcome, RejectedError):
            raise outcome  # answered with the code it would be dead-lettered with
        assert isinstance(outcome, Stored)
        await self._explanations.announce_created(outcome.run)
        return _ok(
            CreateResult,
            run_id=outcome.run_id,
            revision=outcome.revision,
            duplicate=outcome.duplicate,
        )

    async def put_attachment(self, body: bytes, headers: Mapping[str, str]) -> Reply:
        """Raw bytes in, content-addressed; the metadata comes from the ``Rmos-*`` headers."""
        if len(body) > self._max_blob_bytes:
            raise BadRequestError(
                ApiErrorCode.PAYLOAD_TOO_LARGE, f"{len(body)} bytes, limit {self._max_blob_bytes}"
            )
        given = {
            "kind": headers.get(KIND_HEADER),
            "mime": headers.get(MIME_HEADER),
            "filename": headers.get(FILENAME_HEADER),
        }
        meta = validate(BlobHeaders, {k: v for k, v in given.items() if v is not None})
        info = await self._store.put_blob(
            body, kind=meta.kind, mime=meta.mime, filename=meta.filename or ""
        )
        return _ok(BlobStored, sha256=info.sha256, size_bytes=info.size_bytes)

    async def get_attachment(self, body: bytes, headers: Mapping[str, str]) -> Reply:
        """The raw bytes, with the blob's metadata as headers; the one non-JSON success reply."""
        request = parse_request(BlobRequest, body)
        found = await self._store.get_blob(request.sha256)
        if found is None:
            raise BadRequestError(ApiErrorCode.BLOB_NOT_FOUND, f"no blob {request.sha256}")
        data, info = found
        headers = {SHA256_HEADER: info.sha256, KIND_HEADER: info.kind, MIME_HEADER: info.mime}
        if info.filename:  # none was given
            headers[FILENAME_HEADER] = info.filename
        return Reply(data, {**headers, "content-type": info.mime})


def to_query(request: ListRequest, after: tuple[str, str] | None) -> Query:
    """The index query of a ``list`` request; time bounds in the index's UTC text form."""
    filters = request.filters()
    bounds = {
        key: utc_text(parse_timestamp(filters.pop(key)))
        for key in ("created_from", "created_to")
        if key in filters
    }
    prefix = filters.pop("tool_id_prefix", None)
    return Query(
        equals=tuple(sorted(filters.items())),
        tool_id_prefix=prefix,
        created_from=bounds.get("created_from"),
        created_to=bounds.get("created_to"),
        after=after,
        limit=request.limit,
    )


def _error(code: str, message: str, **extra: object) -> Reply:
    return Reply(error_reply(code, message, **extra), {**JSON, ERROR_HEADER: code})
