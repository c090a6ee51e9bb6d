"""The worker's metrics (prometheus-client), served with the probes when ``RMOS_METRICS_PORT`` is
set (``worker.health``).

Counters of what a worker did, by outcome; histograms of how long it took; gauges of where it
stands. Rates, ratios, quantiles and alerts are the scraper's work. The names and labels are
part of the interface (README "Metrics", CONTRACT section 4 for the ignored patches).

The hot path keeps bound children: a label value known in advance is looked up once here
(``EVENTS_STORED``, ...), not per message.

One process serves the default registry (with prometheus-client's process, platform and GC
collectors). A ``--processes`` group runs in multiprocess mode (``worker.multiproc``): every
process writes its values to mmap-ed files and the first process's port serves them all
(:func:`serving_registry`), with ``process_*`` of each process of the group.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from importlib import metadata

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Metric,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from worker.multiproc import GAUGE_MODE, group_dir

# No *_created series: one exposition, whether one process or a group.
disable_created_metrics()  # type: ignore[no-untyped-call]

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000)


def _gauge(name: str, help_text: str, labels: Sequence[str] = ()) -> Gauge:
    """Every gauge here is >= 0 and, in a group, the largest of the live processes' values: a
    process that does not measure it (does not follow the projection, does not sample) has 0."""
    return Gauge(name, help_text, labels, multiprocess_mode=GAUGE_MODE)


EVENTS = Counter(
    "rmos_events_total",
    "Events taken from the stream, by outcome: stored, duplicate, dead_lettered, retried.",
    ("outcome",),
)
EVENTS_STORED = EVENTS.labels("stored")
EVENTS_DUPLICATE = EVENTS.labels("duplicate")
EVENTS_DEAD_LETTERED = EVENTS.labels("dead_lettered")
EVENTS_RETRIED = EVENTS.labels("retried")
GROUP_COMMITS = Counter("rmos_group_commits_total", "Group commits of event batches.")
DEAD_LETTERS = Counter(
    "rmos_dead_letters_total", "Dead letters stored on the DLQ stream, by code.", ("code",)
)
PATCHES = Counter(
    "rmos_explain_patches_total",
    "Explanation patches taken, by outcome: applied, or repeated (the same patch again).",
    ("outcome",),
)
PATCHES_APPLIED = PATCHES.labels("applied")
PATCHES_REPEATED = PATCHES.labels("repeated")
PATCHES_IGNORED = Counter(  # named by CONTRACT section 4
    "rmos_explain_patches_ignored_total",
    "Explanation patches ignored: stale, for another request id than the pending one.",
)
API_REQUESTS = Counter(
    "rmos_api_requests_total",
    "API requests answered, by op and by code (ok or the error).",
    ("op", "code"),
)
STORE_RETRIES = Counter(
    "rmos_store_retries_total", "Writes retried because the store failed as a whole."
)

ACK_LATENCY = Histogram(
    "rmos_event_ack_latency_seconds",
    "From the time JetStream stored an event to its ack, once durable (stored or duplicate).",
    buckets=LATENCY_BUCKETS,
)
GROUP_COMMIT_SECONDS = Histogram(
    "rmos_group_commit_seconds",
    "Duration of a group commit that worked (its last attempt, in a store outage).",
    buckets=COMMIT_BUCKETS,
)
BATCH_SIZE = Histogram(
    "rmos_batch_size_events", "Events in a batch made durable by one group commit.",
    buckets=BATCH_BUCKETS,
)  # fmt: skip
API_SECONDS = Histogram(
    "rmos_api_request_seconds",
    "Time to answer an API request, by op (unknown for an unknown op).",
    ("op",),
    buckets=LATENCY_BUCKETS,
)

PROJECTION_LAG = _gauge(
    "rmos_projection_lag_messages",
    "Messages of the runs bucket not yet applied to this host's list index (jetstream store).",
)
PROJECTION_LAG_SECONDS = _gauge(
    "rmos_projection_lag_seconds",
    "Age of the oldest change of the last batch applied to this host's list index; 0 idle.",
)
STORE_OUTAGE = _gauge(
    "rmos_store_outage",
    "1 while the store fails as a whole (ingest paused, messages held), else 0.",
)
EVENTS_PENDING = _gauge(
    "rmos_events_pending",
    "Events in the stream not yet delivered to the workers (the events consumer's num_pending).",
)
EVENTS_ACK_PENDING = _gauge(
    "rmos_events_ack_pending",
    "Events delivered and not yet acked (the events consumer's num_ack_pending).",
)
EXPLANATIONS_PENDING = _gauge(
    "rmos_explanations_pending", "Runs whose explanation is PENDING, in the list index."
)
EXPLANATION_OLDEST_SECONDS = _gauge(
    "rmos_explanations_pending_oldest_seconds",
    "Since when the oldest PENDING run (by creation) waits: now - its explanation_requested_at.",
)
BUILD_INFO = _gauge("rmos_build_info", "Always 1; the worker's version as a label.", ("version",))


def version() -> str:
    try:
        return metadata.version("rmos-runs")
    except metadata.PackageNotFoundError:  # run from a tree that is not installed
        return "unknown"


BUILD_INFO.labels(version()).set(1)


def value(metric: Counter | Gauge) -> float:
    """This process's value of an unlabelled metric or a bound child (for log lines, tests)."""
    return sum(
        s.value
        for family in metric.collect()
        for s in family.samples
        if s.name in (family.name, family.name + "_total")
    )


def serving_registry(siblings: Callable[[], Sequence[int]] = tuple) -> CollectorRegistry:
    """What the metrics port serves: this process's registry, or in a group (multiprocess
    mode) every process's files, ``python_info``, and ``process_*`` of each process."""
    path = group_dir()
    if path is None:
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry, str(path))  # type: ignore[no-untyped-call]
    registry.register(GroupProcesses(siblings))
    PlatformCollector(registry=registry)
    return registry


def exposition(registry: CollectorRegistry, accept: str) -> tuple[bytes, str]:
    """The scrape's body and content type (the text format, or OpenMetrics when asked for)."""
    encode, content_type = choose_encoder(accept)
    return encode(registry), content_type


class GroupProcesses(Collector):
    """``process_*`` (CPU, memory, file descriptors, start time) of every process of a group,
    labelled ``process``: ``0`` for the first, then 1, 2, ... in the siblings' order."""

    def __init__(self, siblings: Callable[[], Sequence[int]], proc: str = "/proc") -> None:
        self._siblings = siblings
        self._proc = proc

    def collect(self) -> Iterable[Metric]:
        merged: dict[str, Metric] = {}
        for index, pid in enumerate((os.getpid(), *self._siblings())):
            collector = ProcessCollector(pid=_const(pid), proc=self._proc, registry=None)
            for family in collector.collect():
                into = merged.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type)
                )
                for sample in family.samples:
                    into.add_sample(
                        sample.name, {**sample.labels, "process": str(index)}, sample.value
                    )
        return list(merged.values())


def _const(pid: int) -> Callable[[], int]:
    return lambda: pid
