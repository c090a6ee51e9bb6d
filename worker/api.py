"""Request–reply endpoints on ``rmos.runs.v1.api.<op>``: every request gets exactly one reply.

Handlers take raw bytes and validate by hand: a FastStream handler typed with a model sends no
reply at all when validation fails, and the contract promises ``INVALID_REQUEST`` instead.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from contracts.api import GetRequest, error_reply, ok_reply
from contracts.canonical import CanonicalError, parse_json
from contracts.codes import ApiErrorCode
from worker.core.ingest import describe_errors
from worker.core.timefmt import utc_now
from worker.errors import RejectedError, TransientError
from worker.ingest import Delivery, Ingestor, Stored
from worker.store.base import RunStore

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)


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
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadRequestError(ApiErrorCode.INVALID_REQUEST, describe_errors(exc)) from None


class Api:
    """Dispatches ``api.<op>`` requests to the store and the ingest path."""

    def __init__(self, store: RunStore, ingestor: Ingestor) -> None:
        self._store = store
        self._ingestor = ingestor
        self._ops: dict[str, Callable[[bytes], Awaitable[bytes]]] = {
            "get": self.get,
            "create": self.create,
        }

    @property
    def ops(self) -> list[str]:
        return sorted(self._ops)

    async def handle(self, op: str, body: bytes) -> bytes:
        """The reply to one request; never raises."""
        handler = self._ops.get(op)
        if handler is None:
            return error_reply(
                ApiErrorCode.INVALID_REQUEST, f"unknown op {op!r}; known: {', '.join(self.ops)}"
            )
        try:
            return await handler(body)
        except BadRequestError as exc:
            return error_reply(exc.code, exc.message)
        except TransientError as exc:
            return error_reply(ApiErrorCode.INTERNAL, f"{exc}; try again", retryable=True)
        except Exception:
            log.exception("api.%s failed", op)
            return error_reply(ApiErrorCode.INTERNAL, "internal error; see the worker's log")

    async def get(self, body: bytes) -> bytes:
        request = parse_request(GetRequest, body)
        run = await self._store.get_run(request.run_id)
        if run is None:
            raise BadRequestError(ApiErrorCode.RUN_NOT_FOUND, f"no run {request.run_id}")
        return ok_reply(run=run)

    async def create(self, body: bytes) -> bytes:
        """The ingest path with a reply instead of a dead letter."""
        [outcome] = await self._ingestor.ingest([Delivery(body, None, utc_now())])
        if isinstance(outcome, RejectedError):
            raise BadRequestError(outcome.code, outcome.detail)
        assert isinstance(outcome, Stored)
        return ok_reply(
            run_id=outcome.run_id, revision=outcome.revision, duplicate=outcome.duplicate
        )
