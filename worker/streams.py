"""The streams and durable consumers this worker owns, declared and reconciled at start-up.

FastStream updates streams it declares, but never a durable consumer whose config changed, and
the contract wants limits retention (any service may attach its own consumers): so both are
declared here explicitly, with ``add_consumer`` doubling as the update of an existing one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, BadRequestError

from contracts.subjects import EVENTS_CONSUMER, PATCHES_CONSUMER, Subjects
from worker.errors import StoreOutageError
from worker.settings import Settings

log = logging.getLogger(__name__)
DUPLICATE_WINDOW_S = 120.0


NOT_CLUSTERED = 10074  # JSStreamReplicasNotSupportedErr: replicas > 1 on a single server
PLACEMENT_WAIT_S = 30.0  # how long a cluster may take to place new streams at start-up
SCAN_RETRIES = 5  # a scan's fetch refused (503: the consumer's leader not there yet) or timed out
SCAN_RETRY_S = 0.5  # the first wait before a retry, doubled each time (0.5 + 1 + 2 + 4 + 8 s)


class PlacementError(RuntimeError):
    """JetStream cannot hold the streams as configured (replicas, resources): a start-up error."""


def stream_configs(subjects: Subjects, replicas: int = 1) -> list[StreamConfig]:
    """File storage, limits retention, a 2-minute duplicate window, one subject filter each."""
    return [
        StreamConfig(
            name=name,
            subjects=[subject],
            storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS,
            duplicate_window=DUPLICATE_WINDOW_S,
            num_replicas=replicas,
        )
        for name, subject in subjects.streams().items()
    ]


def events_consumer_config(settings: Settings) -> ConsumerConfig:
    """The worker's durable pull consumer on ``events.>``."""
    return durable_config(EVENTS_CONSUMER, f"{settings.subjects.events}.>", settings)


def patches_consumer_config(settings: Settings) -> ConsumerConfig:
    """The worker's durable pull consumer on ``explain.patch.>``."""
    return durable_config(PATCHES_CONSUMER, f"{settings.subjects.explain}.patch.>", settings)


def durable_config(name: str, subject: str, settings: Settings) -> ConsumerConfig:
    """A durable pull consumer: explicit acks, bounded redelivery, bounded in-flight messages."""
    return ConsumerConfig(
        durable_name=name,
        filter_subject=subject,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=settings.ack_wait_s,
        max_deliver=settings.max_deliver,
        max_ack_pending=settings.max_ack_pending,
    )


async def ensure_streams(js: JetStreamContext, subjects: Subjects, replicas: int = 1) -> None:
    """Create each stream, or bring an existing one back to this configuration."""
    for config in stream_configs(subjects, replicas):
        try:
            await js.add_stream(config)
        except BadRequestError as exc:
            if exc.err_code == NOT_CLUSTERED:
                raise
            log.warning("stream %s exists with another configuration: updating it", config.name)
            await js.update_stream(config)


async def ensure_replicated(
    declare: Callable[[int], Awaitable[None]],
    replicas: int | None,
    default: int,
    wait_s: float = PLACEMENT_WAIT_S,
) -> int:
    """Run ``declare(replicas)``; unset replicas are ``default``, or 1 on a single server.

    A cluster that cannot place them yet (a peer still joining or down) is given ``wait_s``;
    then ``PlacementError``. Returns the replicas used."""
    wanted = replicas or default
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        try:
            await declare(wanted)
            return wanted
        except APIError as exc:
            if exc.err_code == NOT_CLUSTERED and replicas is None and wanted > 1:
                log.info("a single NATS server: streams and buckets get 1 replica, not %d", wanted)
                return await ensure_replicated(declare, 1, 1, wait_s)
            if exc.err_code == NOT_CLUSTERED or loop.time() >= deadline:
                raise PlacementError(
                    f"JetStream cannot hold the streams with {wanted} replicas: {exc.description}"
                ) from exc
            log.warning("streams not placed yet (%s); retrying", exc.description)
            await asyncio.sleep(1.0)


async def ensure_consumer(js: JetStreamContext, stream: str, config: ConsumerConfig) -> None:
    """Create the durable consumer, or update it in place when its settings changed."""
    await js.add_consumer(stream, config)


async def scan_fetch(
    sub: JetStreamContext.PullSubscription, batch: int, timeout: float, stream: str
) -> list[Msg]:
    """One fetch of a one-off scan of ``stream`` (an audit's). A refusal or a timeout that
    passes (a consumer just made on a cluster answers 503 until its leader is placed) is
    retried a few times, then the store is out (``StoreOutageError``). A scan checks the
    sequence of what it gets, so a message that a failed fetch dropped is not missed silently."""
    wait = SCAN_RETRY_S
    for attempt in range(SCAN_RETRIES + 1):
        try:
            return await sub.fetch(batch, timeout)
        except (nats.errors.Error, TimeoutError) as exc:
            if attempt == SCAN_RETRIES:
                raise StoreOutageError(
                    f"the scan of {stream} failed {attempt + 1} times: {exc!r}"
                ) from exc
            log.info("the scan of %s failed (%r); retrying in %s s", stream, exc, wait)
            await asyncio.sleep(wait)
            wait *= 2
    raise AssertionError("unreachable")  # pragma: no cover
