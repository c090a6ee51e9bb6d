"""A small async client for producers, explainers and tests: plain nats-py, no FastStream.

async with await RunsClient.connect("nats://127.0.0.1:4222") as runs:
    await runs.publish_event(event)         # JetStream, with the right subject and Nats-Msg-Id
    run = await runs.get(run_id)            # request–reply; errors raise RunsApiError

``RunsClient.from_settings(Settings())`` connects as the programs do: ``RMOS_NATS_URL`` with the
user and password, token, nkey seed, creds and TLS settings (CONTRACT section 8).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import PubAck

from contracts.api import (
    ERROR_HEADER,
    FILENAME_HEADER,
    KIND_HEADER,
    MIME_HEADER,
    BlobStored,
    CheckpointReply,
    ConsistencyProof,
    CreateResult,
    DiffResult,
    ExplainResult,
    History,
    LeafRange,
    ListPage,
    MetaPatched,
    RunSummary,
    VerifyReport,
)
from contracts.subjects import Subjects
from contracts.transparency import Checkpoint
from worker import tracing
from worker.connection import connect_options, first_connect, servers
from worker.settings import Settings


class RunsApiError(Exception):
    """An ``{"ok": false}`` reply, with the contract's error code."""

    def __init__(self, code: str, message: str, reply: dict[str, Any]) -> None:
        self.code = code
        self.message = message
        self.reply = reply
        super().__init__(f"{code}: {message}")


def _checked(reply: dict[str, Any]) -> dict[str, Any]:
    if not reply.get("ok"):
        error = reply.get("error", {})
        raise RunsApiError(error.get("code", "INTERNAL"), error.get("message", ""), reply)
    return reply


class RunsClient:
    """Publishes run events and calls the worker's request–reply API."""

    def __init__(self, nc: Client, subjects: Subjects | None = None, timeout: float = 5.0) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.subjects = subjects or Subjects()
        self.timeout = timeout

    @classmethod
    async def connect(
        cls,
        url: str,
        subjects: Subjects | None = None,
        timeout: float = 5.0,
        connect_timeout: float | None = None,
    ) -> RunsClient:
        """Connect, reconnecting for ever once connected. Raises ``ConnectError`` (of
        worker.connection: a ConnectionError, its text without the password) if the first
        connect does not succeed within ``connect_timeout`` seconds (default ``2 × timeout``),
        or sooner on an authorization or certificate error (nats-py alone retries for ever)."""
        return await cls.connect_with({"servers": servers(url)}, subjects, timeout, connect_timeout)

    @classmethod
    async def from_settings(
        cls,
        settings: Settings,
        program: str = "client",
        *,
        url: str | None = None,
        timeout: float = 5.0,
        connect_timeout: float | None = None,
        **nats_options: Any,
    ) -> RunsClient:
        """Connect as ``program`` with the settings' connection (``url`` instead of
        ``RMOS_NATS_URL`` when given; :func:`worker.connection.connect_options`) and
        subjects, within ``connect_timeout`` (default ``RMOS_CONNECT_TIMEOUT_S``); as
        :meth:`connect` otherwise. ``nats_options`` go to nats-py's ``connect``."""
        options = {**connect_options(settings, program, url), **nats_options}
        if connect_timeout is None:
            connect_timeout = settings.connect_timeout_s
        return await cls.connect_with(options, settings.subjects, timeout, connect_timeout)

    @classmethod
    async def connect_with(
        cls,
        options: Mapping[str, Any],
        subjects: Subjects | None = None,
        timeout: float = 5.0,
        connect_timeout: float | None = None,
    ) -> RunsClient:
        """Connect with nats-py options (``servers`` and any other), as :meth:`connect`."""
        nc = await first_connect(
            **{"connect_timeout": timeout, **options},  # one attempt at one server
            timeout=2 * timeout if connect_timeout is None else connect_timeout,
        )
        return cls(nc, subjects, timeout)

    async def close(self) -> None:
        await self.nc.close()

    async def __aenter__(self) -> RunsClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def publish_event(self, event: dict[str, Any]) -> PubAck:
        """Publish on ``events.<source>`` with ``Nats-Msg-Id: <source>:<event_id>``."""
        return await self.publish_raw(
            self.subjects.event(event["source"]),
            json.dumps(event).encode(),
            msg_id=f"{event['source']}:{event['event_id']}",
        )

    async def publish_raw(self, subject: str, data: bytes, msg_id: str | None = None) -> PubAck:
        """Publish any bytes with JetStream (tests use it for malformed events)."""
        headers = tracing.inject({"Nats-Msg-Id": msg_id} if msg_id else None)
        return await self.js.publish(subject, data, headers=headers, timeout=self.timeout)

    async def request(
        self, op: str, body: bytes | dict[str, Any], headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """One API call; returns the ``ok`` reply or raises :class:`RunsApiError`."""
        msg = await self._call(op, body, headers)
        return _checked(json.loads(msg.data))

    async def _call(
        self, op: str, body: bytes | dict[str, Any], headers: dict[str, str] | None = None
    ) -> Msg:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return await self.nc.request(
            self.subjects.api_op(op), data, timeout=self.timeout, headers=tracing.inject(headers)
        )

    async def put_attachment(
        self,
        data: bytes,
        *,
        kind: str | None = None,
        mime: str | None = None,
        filename: str | None = None,
    ) -> BlobStored:
        """Store a blob, content-addressed; metadata left out gets the contract's defaults
        (kind ``unknown``, mime ``application/octet-stream``, no file name)."""
        if len(data) > self.nc.max_payload:  # the server would drop the connection instead
            raise RunsApiError(
                "PAYLOAD_TOO_LARGE",
                f"{len(data)} bytes, server max_payload {self.nc.max_payload}",
                {},
            )
        given = {KIND_HEADER: kind, MIME_HEADER: mime, FILENAME_HEADER: filename}
        headers = {name: value for name, value in given.items() if value is not None}
        return BlobStored.model_validate(await self.request("attachments.put", data, headers))

    async def get_attachment(self, sha256: str) -> tuple[bytes, dict[str, str]]:
        """The blob's bytes and its ``Rmos-*`` metadata headers."""
        msg = await self._call("attachments.get", {"sha256": sha256})
        headers = dict(msg.headers or {})
        if ERROR_HEADER in headers:
            _checked(json.loads(msg.data))
        return msg.data, headers

    async def get(self, run_id: str) -> dict[str, Any]:
        """The artifact exactly as stored (a plain dict, so that its hashes can be recomputed)."""
        run: dict[str, Any] = (await self.request("get", {"run_id": run_id}))["run"]
        return run

    async def create(self, event: dict[str, Any]) -> CreateResult:
        """Ingest an event through request–reply; answered once it is durable."""
        return CreateResult.model_validate(await self.request("create", event))

    async def diff(self, a: str, b: str) -> DiffResult:
        """What differs between two runs' immutable cores, with its severity."""
        return DiffResult.model_validate(await self.request("diff", {"a": a, "b": b}))

    async def verify(self, run_id: str) -> VerifyReport:
        """Every check, recomputed by the worker from the stored bytes, and the inclusion
        proof of the run's current revision (``contracts.transparency.inclusion_valid``)."""
        return VerifyReport.model_validate(await self.request("verify", {"run_id": run_id}))

    async def log_checkpoint(self) -> Checkpoint:
        """The latest signed checkpoint of the Merkle log (check it: ``signature_valid``)."""
        reply = CheckpointReply.model_validate(await self.request("log.checkpoint", {}))
        return Checkpoint.model_validate(reply.checkpoint)

    async def log_consistency(self, first: int, second: int | None = None) -> ConsistencyProof:
        """A proof that the log's first ``first`` leaves are a prefix of its first ``second``
        (default: the latest checkpoint's size)."""
        body: dict[str, Any] = {"first": first}
        if second is not None:
            body["second"] = second
        return ConsistencyProof.model_validate(await self.request("log.consistency", body))

    async def log_leaves(self, start: int, end: int | None = None) -> LeafRange:
        """The leaves at positions ``start`` to ``end`` (exclusive; at most 1000)."""
        body: dict[str, Any] = {"start": start}
        if end is not None:
            body["end"] = end
        return LeafRange.model_validate(await self.request("log.leaves", body))

    async def patch_meta(
        self, run_id: str, meta_updates: dict[str, Any], expected_revision: int | None = None
    ) -> MetaPatched:
        """Set meta keys (None removes one); with ``expected_revision``, a compare-and-swap."""
        body: dict[str, Any] = {"run_id": run_id, "meta_updates": meta_updates}
        if expected_revision is not None:
            body["expected_revision"] = expected_revision
        return MetaPatched.model_validate(await self.request("patch_meta", body))

    async def explain(self, run_id: str, force: bool = False) -> ExplainResult:
        """Request an explanation; with ``force``, a new one even when READY, ERROR or PENDING."""
        body = {"run_id": run_id, "force": force}
        return ExplainResult.model_validate(await self.request("explain", body))

    async def history(self, run_id: str) -> History:
        """Every revision of a run, oldest first."""
        return History.model_validate(await self.request("history", {"run_id": run_id}))

    async def list_page(
        self, *, limit: int = 50, cursor: str | None = None, **filters: Any
    ) -> ListPage:
        """One page of summaries, newest first, and the cursor of the next (None: last page)."""
        body = {**filters, "limit": limit, **({"cursor": cursor} if cursor else {})}
        return ListPage.model_validate(await self.request("list", body))

    async def iter_runs(self, *, page_size: int = 200, **filters: Any) -> AsyncIterator[RunSummary]:
        """Every matching run summary, newest first, page after page."""
        cursor = None
        while True:
            page = await self.list_page(limit=page_size, cursor=cursor, **filters)
            for item in page.items:
                yield item
            cursor = page.next_cursor
            if cursor is None:
                return
