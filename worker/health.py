"""The HTTP port of a worker (``RMOS_METRICS_PORT``): ``GET /metrics``, ``/healthz``, ``/readyz``
(CONTRACT section 8, "Health"), and the gauges sampled off the hot path.

- ``/healthz``: 200 ``{"alive": true}`` while the process's loops run, whether NATS is reachable
  or not (the event loop answers it; a consumer task that died makes it 503, as the worker then
  stops).
- ``/readyz``: 200 ``{"ready": true}`` once start-up is finished (streams, consumers and store
  declared and open), NATS connected, the store up, the list index built and every task
  running; otherwise 503 ``{"ready": false, "reasons": [...]}``, one ``"<what>: <why>"`` a
  reason (see :meth:`Health.not_ready`). In a ``--processes`` group the first process answers
  for the group: its own state, and each sibling until its start-up is finished.

A small asyncio HTTP/1.1 handler: one request a connection, bounded reads, no framework. The
scrape is encoded in a thread (in a group it reads every process's files).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry

from contracts.models import parse_timestamp
from worker import metrics, multiproc
from worker.outage import Outage
from worker.store.base import RunStore
from worker.store.files import FileStore
from worker.store.index import RunIndex
from worker.store.jetstream import JetStreamStore
from worker.store.projection import Projection

log = logging.getLogger(__name__)
READ_TIMEOUT_S = 5.0
SAMPLE_EVERY_S = 5.0  # consumer info and the PENDING explanations, off the hot path
SAMPLE_TIMEOUT_S = 2.0
MAX_REASON = 300
JSON_TYPE = "application/json"


class Health:
    """What the probes answer. The worker sets ``started`` and ``stopping`` and lends its
    task list; the rest is read when asked."""

    def __init__(
        self,
        *,
        connection: Callable[[], Client | None],
        outage: Outage,
        tasks: Sequence[asyncio.Task[None]],
        projection: Projection | None = None,
        group: Path | None = None,
        siblings: Callable[[], Sequence[int]] = tuple,
    ) -> None:
        self._connection = connection
        self._outage = outage
        self._tasks = tasks
        self._projection = projection
        self._group = group
        self.siblings = siblings
        self.started = False
        self.stopping = False
        self.consumer_missing: str | None = None  # set by the Sampler

    def dead(self) -> list[str]:
        """Why the process is not alive: tasks that died (the worker is stopping then)."""
        reasons = []
        for task in self._tasks:
            if not task.done():
                continue
            if task.cancelled():
                if not self.stopping:
                    reasons.append(f"task {task.get_name()}: cancelled")
            elif task.exception() is not None:
                reasons.append(f"task {task.get_name()}: died ({task.exception()!r})")
            elif not self.stopping:
                reasons.append(f"task {task.get_name()}: stopped")
        return [_short(r) for r in reasons]

    async def not_ready(self) -> list[str]:
        """Why the process (its group) should not be sent work now; [] when ready."""
        reasons = []
        if self.stopping:
            reasons.append("worker: stopping")
        if not self.started:
            reasons.append("startup: not finished")
        reasons += self._nats()
        if self._outage.active:
            reasons.append(f"store: down ({self._outage.cause})")
        if self.started and self._projection is not None:
            reasons += await self._index()
        reasons += self.dead()
        if self.consumer_missing is not None:
            reasons.append(self.consumer_missing)
        if self._group is not None:
            reasons += [
                f"process {pid}: start-up not finished"
                for pid in self.siblings()
                if not multiproc.is_ready(self._group, pid)
            ]
        return [_short(r) for r in reasons]

    def _nats(self) -> list[str]:
        nc = self._connection()
        if nc is None or nc.is_connecting:
            return ["nats: not connected"]
        if nc.is_reconnecting:
            return ["nats: reconnecting"]
        if nc.is_closed:
            return ["nats: connection closed"]
        if not nc.is_connected:
            return ["nats: not connected"]
        return []

    async def _index(self) -> list[str]:
        assert self._projection is not None
        try:
            position = await asyncio.to_thread(self._projection.position)
        except Exception as exc:  # the SQLite file unreadable: not ready to list
            return [f"index: unreadable ({exc})"]
        if position is None:
            return ["index: being built"]
        applied, until = position
        if applied < until:
            return [f"index: rebuilding ({applied} of {until} changes applied)"]
        return []


def _short(text: str) -> str:
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


class Sampler:
    """Gauges read from elsewhere every ``every_s`` seconds: the events consumer's pending and
    ack-pending counts, the PENDING explanations and the age of the oldest. One process of a
    group samples (the one that serves); never on the hot path."""

    def __init__(
        self,
        js_of: Callable[[], JetStreamContext],
        stream: str,
        consumer: str,
        store: RunStore,
        health: Health,
        *,
        every_s: float = SAMPLE_EVERY_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._js_of = js_of
        self._stream = stream
        self._consumer = consumer
        self._store = store
        self._health = health
        self._every_s = every_s
        self._clock = clock
        self._failing: set[str] = set()

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            await self.sample()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self._every_s)

    async def sample(self) -> None:
        for name, sample in (("consumer", self._consumer_info), ("explanations", self._pending)):
            try:
                await sample()
            except Exception as exc:  # NATS or the store down: the gauges keep their values
                if name not in self._failing:
                    log.info("%s gauges not sampled: %r", name, exc)
                self._failing.add(name)
            else:
                self._failing.discard(name)

    async def _consumer_info(self) -> None:
        try:
            info = await self._js_of().consumer_info(
                self._stream, self._consumer, timeout=SAMPLE_TIMEOUT_S
            )
        except nats.js.errors.NotFoundError:
            self._health.consumer_missing = f"consumer {self._consumer}: not found"
            raise
        self._health.consumer_missing = None
        metrics.EVENTS_PENDING.set(info.num_pending or 0)
        metrics.EVENTS_ACK_PENDING.set(info.num_ack_pending or 0)

    async def _pending(self) -> None:
        index = _index_of(self._store)
        if index is None:
            return
        if isinstance(self._store, JetStreamStore):
            position = await asyncio.to_thread(self._store.projection.position)
            if position is None or position[0] < position[1]:
                return  # a partial index: the last values stand until it is built
        count, oldest = await asyncio.to_thread(index.pending_explanations)
        age = 0.0
        if oldest is not None:
            run = await self._store.get_run(oldest)
            if run is not None:
                age = self._age(run.get("explanation_requested_at") or run["created_at_utc"])
        metrics.EXPLANATIONS_PENDING.set(count)
        metrics.EXPLANATION_OLDEST_SECONDS.set(age)

    def _age(self, text: str) -> float:
        try:
            return max(self._clock() - parse_timestamp(text).timestamp(), 0.0)
        except ValueError:
            return 0.0


def _index_of(store: RunStore) -> RunIndex | None:
    return store.index if isinstance(store, FileStore | JetStreamStore) else None


Metrics = Callable[[str], Awaitable[tuple[bytes, str]]]


def scrape(registry: CollectorRegistry) -> Metrics:
    async def encoded(accept: str) -> tuple[bytes, str]:
        return await asyncio.to_thread(metrics.exposition, registry, accept)

    return encoded


async def serve(host: str, port: int, health: Health, scraped: Metrics) -> asyncio.Server:
    """The HTTP server (close it to stop): ``/metrics``, ``/healthz``, ``/readyz``; 404 else."""

    async def respond(method: str, path: str, accept: str) -> tuple[str, str, bytes]:
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"only GET here\n"
        if path == "/metrics":
            body, content_type = await scraped(accept)
            return "200 OK", content_type, body
        if path == "/healthz":
            reasons = health.dead()
            return _json({"alive": not reasons, **({"reasons": reasons} if reasons else {})})
        if path == "/readyz":
            reasons = await health.not_ready()
            return _json({"ready": not reasons, **({"reasons": reasons} if reasons else {})})
        return "404 Not Found", "text/plain", b"GET /metrics, /healthz or /readyz\n"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
            method, path, accept = _request(head)
            try:
                status, content_type, body = await respond(method, path, accept)
            except Exception:
                log.exception("GET %s failed", path)
                status, content_type, body = "500 Internal Server Error", "text/plain", b"error\n"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + (b"" if method == "HEAD" else body)
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # a client that sends nothing useful gets nothing
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, host, port)
    log.info("metrics and probes on http://%s:%d/ (metrics, healthz, readyz)", host, port)
    return server


def _request(head: bytes) -> tuple[str, str, str]:
    """(method, path without the query, Accept header) of a request head."""
    request_line, *headers = head.decode("latin-1").split("\r\n")
    method, _, rest = request_line.partition(" ")
    accept = ""
    for line in headers:
        name, _, value = line.partition(":")
        if name.strip().lower() == "accept":
            accept = value.strip()
    return method, rest.partition(" ")[0].split("?", 1)[0], accept


def _json(body: dict[str, object]) -> tuple[str, str, bytes]:
    ok = body.get("alive", body.get("ready"))
    status = "200 OK" if ok else "503 Service Unavailable"
    return status, JSON_TYPE, json.dumps(body).encode() + b"\n"
