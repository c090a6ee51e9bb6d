"""The composition root: broker, streams, the events consumer, the API, start and stop.

Start-up order matters for readiness (CONTRACT section 0): the store is opened (leftover temp
files swept) and the streams and durable consumers declared *before* the API subscribes
(``worker.responder``, last in start-up), so a worker that answers ``api.get`` has everything in
place. The API stops last, after the consumers have finished their batches.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from contextlib import suppress

from faststream import FastStream
from faststream.nats import NatsMessage
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from contracts.subjects import EVENTS_CONSUMER
from worker import health, metrics, multiproc, tracing
from worker.api import Api, Reply
from worker.broker import Broker
from worker.checkpoints import Checkpoints
from worker.connection import ConnectError, connect_options, connector
from worker.consumer import EventConsumer
from worker.delivery import DeadLetters, MaxDeliveriesWatcher
from worker.errors import TransientError
from worker.explanations import Explanations
from worker.intake import Intake
from worker.outage import Outage
from worker.output import Exit
from worker.patches import PatchConsumer
from worker.proofs import Proofs
from worker.responder import Responder
from worker.settings import Settings
from worker.store.base import RunStore
from worker.store.files import FileStore
from worker.store.jetstream import JetStreamStore
from worker.streams import (
    PlacementError,
    ensure_consumer,
    ensure_replicated,
    ensure_streams,
    events_consumer_config,
    patches_consumer_config,
)

log = logging.getLogger(__name__)
API_QUEUE = "rmos-worker-api"
ADOPT_ATTEMPTS = 5  # start-up adoption of runs older than the log: tries, 0.5 s doubling
API_WORKERS = 16


async def _as_is(msg: NatsMessage) -> NatsMessage:
    """The advisories subscriber's decoder: the message itself, its body not parsed
    (FastStream's default tries ``json.loads`` on every body; the handler reads ``msg.body``)."""
    return msg


class Worker:
    """One worker process: owns the broker, the store and the consumer task."""

    def __init__(self, settings: Settings, nats_url: str) -> None:
        self.settings = settings
        self.broker = Broker(
            connect_options(settings, "worker", nats_url),
            first_connect_timeout=settings.connect_timeout_s,  # then exit 1, "cannot start: ..."
            max_reconnect_attempts=-1,  # nats-py's default gives up after 60 tries, then spins
            reconnect_time_wait=1,
            closed_cb=self._on_closed,
            graceful_timeout=settings.graceful_timeout_s,
            log_level=logging.DEBUG,  # a line per message handled is noise at INFO
            # No dependency injection: the handlers take the message (``_as_is``); fast_depends
            # resolved that argument in a worker thread per request (py-spy, issue 14).
            apply_types=False,
        )
        self.app = FastStream(
            self.broker,
            on_startup=[self._on_startup],
            after_startup=[self._after_startup],
            on_shutdown=[self._on_shutdown],
            after_shutdown=[self._after_shutdown],
        )
        self.store = make_store(
            settings, nats_url, lambda: self.broker.config.connection_state.stream
        )
        self.intake = Intake(self.store, max_event_bytes=settings.max_event_bytes)
        self.dead_letters = DeadLetters(self.broker, settings)
        self.explanations = Explanations(self.store, self.broker, settings)
        self.checkpoints = Checkpoints(
            lambda: self.broker.config.connection_state.stream,
            settings.subjects,
            self.store.log,
            settings.signing_key_path,
            interval_s=settings.checkpoint_interval_s,
            timeout=settings.publish_timeout_s,
        )
        self.api = Api(
            self.store,
            self.intake,
            self.explanations,
            Proofs(self.store, self.checkpoints),
            max_blob_bytes=settings.max_blob_bytes,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._stops: list[Callable[[], None]] = []
        self._sweeps_stop = asyncio.Event()
        self._probes: asyncio.Server | None = None
        self.outage = Outage(
            keepalive_s=max(settings.ack_wait_s / 3, 0.2),
            first_delay_s=settings.nak_base_delay_s,
            max_delay_s=settings.store_retry_max_s,
        )
        self.health = health.Health(  # the runner sets health.siblings in a --processes group
            connection=lambda: self.broker._connection,
            outage=self.outage,
            tasks=self._tasks,
            projection=self.store.projection if isinstance(self.store, JetStreamStore) else None,
            group=multiproc.group_dir(),
        )
        self.on_stopping: list[Callable[[], None]] = []  # called first when the worker stops
        self._stopping = False
        self.failed: Exit | None = None  # why it stopped on its own
        self._register_subscribers()

    def _register_subscribers(self) -> None:
        subjects = self.settings.subjects
        prefix = subjects.api + "."

        async def api_request(msg: Msg) -> Reply:
            op = msg.subject.removeprefix(prefix)
            with tracing.continued(msg.headers, f"rmos.api.{op}", kind="server"):
                return await self.api.handle(op, msg.data, msg.headers or {})

        # Requests are answered concurrently: a slow list or verify never holds up a create.
        self.responder = Responder(
            f"{subjects.api}.>", API_QUEUE, api_request, concurrency=API_WORKERS
        )
        watcher = MaxDeliveriesWatcher(self.broker, self.dead_letters, self.settings)

        @self.broker.subscriber(watcher.subject, queue=API_QUEUE, decoder=_as_is)
        async def max_deliveries(msg: NatsMessage) -> None:
            try:
                await watcher.on_advisory(json.loads(msg.body))
            except Exception:
                log.exception("MAX_DELIVERIES advisory not handled: %r", msg.body[:500])

    async def _on_closed(self) -> None:
        if not self._stopping:
            log.error("NATS connection closed for good; stopping")
            self.failed = Exit.UNREACHABLE
            self.stop()

    async def _on_startup(self) -> None:
        if self.settings.metrics_port is not None:  # the probes answer from the start
            registry = metrics.serving_registry(lambda: self.health.siblings())
            self._probes = await health.serve(
                self.settings.metrics_host,
                self.settings.metrics_port,
                self.health,
                health.scrape(registry),
            )
        if isinstance(self.store, FileStore):
            await self.store.open()  # temp files swept before anything else
        await asyncio.to_thread(self.checkpoints.open)
        if self.settings.signing_key is None and isinstance(self.store, JetStreamStore):
            log.warning(
                "checkpoints are signed with this data dir's own key (%s): give every host of "
                "the jetstream store one RMOS_SIGNING_KEY",
                self.checkpoints.key_path,
            )
        await self.broker.connect()
        js = self.broker.config.connection_state.stream
        subjects = self.settings.subjects

        async def declare(replicas: int) -> None:
            await ensure_streams(js, subjects, replicas)
            if isinstance(self.store, JetStreamStore):
                self.store.replicas = replicas
                await self.store.open()

        jetstream_store = isinstance(self.store, JetStreamStore)
        await ensure_replicated(declare, self.settings.store_replicas, 3 if jetstream_store else 1)
        await self._adopt_unlogged()
        await ensure_consumer(js, subjects.events_stream, events_consumer_config(self.settings))
        await ensure_consumer(js, subjects.explain_stream, patches_consumer_config(self.settings))
        await self.responder.start(self.broker.config.connection_state.connection)

    async def _adopt_unlogged(self) -> None:
        """A store older than its Merkle log (an upgrade) has its runs logged as they stand;
        a log that is empty while checkpoints exist was lost: said, never silently rebuilt.
        A passing failure (a stream just created, its leader not yet elected) is retried a few
        times; adoption is per run and idempotent, so a retry goes on where the last stopped."""
        adopted, wanted = 0, None
        for attempt in range(ADOPT_ATTEMPTS):
            try:
                if wanted is None:
                    wanted = await self._adoption_wanted()
                if wanted:
                    adopted = await self.store.adopt_unlogged()
                break
            except TransientError as exc:  # the store or the stream failing at start-up
                if attempt == ADOPT_ATTEMPTS - 1:
                    log.warning(
                        "runs older than the Merkle log not looked for (%s); next start", exc
                    )
                    return
                await asyncio.sleep(0.5 * 2**attempt)
        if adopted:
            log.warning(
                "the Merkle log is new: %d runs stored before it are logged as they stand now "
                "(earlier revisions of each predate the log)",
                adopted,
            )

    async def _adoption_wanted(self) -> bool:
        if await self.store.log_size() > 0:
            return False
        if await self.checkpoints.latest() is not None:
            async for _ in self.store.stored_runs():  # runs, but no log: said once
                log.error(
                    "the Merkle log is empty but signed checkpoints of it exist: it was lost or "
                    "removed; restore it (`rmos-runs audit` names the runs it misses)"
                )
                break
            return False
        return True

    async def _after_startup(self) -> None:
        js = self.broker.config.connection_state.stream
        events = EventConsumer(
            js, self.intake, self.dead_letters, self.explanations, self.settings, self.outage
        )
        patches = PatchConsumer(
            js, self.explanations, self.dead_letters, self.settings, self.outage
        )
        self._stops = [events.stop, patches.stop, self._sweeps_stop.set]
        jobs = [
            ("events-consumer", events.run()),
            ("patches-consumer", patches.run()),
            ("explanation-sweeps", self.explanations.run_sweeps(self._sweeps_stop)),
            ("checkpoints", self.checkpoints.run(self._sweeps_stop)),
        ]
        if isinstance(self.store, JetStreamStore):
            jobs.append(("list-projection", self.store.projection.run(self._sweeps_stop)))
        if self.settings.metrics_port is not None:  # the process that serves samples
            sampler = health.Sampler(
                lambda: self.broker.config.connection_state.stream,
                self.settings.subjects.events_stream,
                EVENTS_CONSUMER,
                self.store,
                self.health,
            )
            jobs.append(("metrics-sampler", sampler.run(self._sweeps_stop)))
        for name, job in jobs:
            task = asyncio.create_task(job, name=name)
            task.add_done_callback(self._on_task_done)
            self._tasks.append(task)
        self.health.started = True
        group = multiproc.group_dir()
        if group is not None and self.settings.metrics_port is None:  # a sibling of a group
            multiproc.mark_ready(group, os.getpid())
        log.info(
            "rmos-runs worker ready: %s store, data dir %s",
            self.settings.store,
            self.settings.data_dir,
        )

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("%s died; stopping", task.get_name(), exc_info=task.exception())
            self.failed = Exit.FAILED
            self.stop()

    async def _on_shutdown(self) -> None:
        """Stop fetching; finish the batches in hand (what is not finished is redelivered)."""
        self._stopping = True
        self.health.stopping = True
        for stop in (*self.on_stopping, *self._stops):
            stop()
        running = [task for task in self._tasks if not task.done()]
        if running:
            _, late = await asyncio.wait(running, timeout=self.settings.graceful_timeout_s)
            for task in late:
                log.warning("%s did not finish in time; its messages will come back", task)
                task.cancel()
        await self.responder.stop(self.settings.graceful_timeout_s)  # then FastStream's

    async def _after_shutdown(self) -> None:
        if self._probes is not None:
            self._probes.close()
        self.store.close()

    def stop(self) -> None:
        """Begin a graceful stop, as SIGTERM does."""
        self.app.exit()

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT or a closed connection; the exit code (0 after a clean stop)."""
        try:
            with suppress(asyncio.CancelledError):
                await self.app.run()
        except (PlacementError, ConnectError) as exc:
            log.error("cannot start: %s", exc)
            await self.broker.stop()
            return Exit.UNREACHABLE if isinstance(exc, ConnectError) else Exit.FAILED
        return self.failed or Exit.OK


def make_store(
    settings: Settings, nats_url: str, js_of: Callable[[], JetStreamContext]
) -> RunStore:
    """The store ``settings.store`` names (CONTRACT section 8)."""
    if settings.store == "jetstream":
        return JetStreamStore(
            js_of,
            connector(
                connect_options(settings, "worker-projection", nats_url),
                timeout=settings.connect_timeout_s,
            ),
            settings.subjects,
            settings.data_dir,
            timeout=settings.publish_timeout_s,
        )
    return FileStore(settings.data_dir)
