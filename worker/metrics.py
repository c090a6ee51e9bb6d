"""Counters of one worker process, served for Prometheus when ``RMOS_METRICS_PORT`` is set.

Counters of what a worker did, by outcome, and gauges of where it stands (the ``list`` projection's
lag); rates, ratios and alerts are the scraper's work.
The text exposition format (version 0.0.4) is written here by hand: it is a few lines, and the
project's packages have no Prometheus client. Each process has its own counters and its own
port: with ``--processes N``, sibling *i* serves on ``RMOS_METRICS_PORT + i`` (scrape them all;
Prometheus sums across targets).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

log = logging.getLogger(__name__)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_READ_TIMEOUT_S = 5.0


class Counter:
    """A monotonic count, split by the values of its labels."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.labels = tuple(labels)
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, *label_values: str, amount: float = 1.0) -> None:
        if len(label_values) != len(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, got {label_values}")
        self._values[label_values] = self._values.get(label_values, 0.0) + amount

    def value(self, *label_values: str) -> float:
        return self._values.get(label_values, 0.0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]
        if not self.labels:
            lines.append(f"{self.name} {_number(self.value())}")
        for values, count in sorted(self._values.items()):
            if self.labels:
                pairs = ",".join(
                    f'{k}="{_escape_label(v)}"' for k, v in zip(self.labels, values, strict=True)
                )
                lines.append(f"{self.name}{{{pairs}}} {_number(count)}")
        return lines


class Gauge(Counter):
    """A value that goes up and down; no sample until it is first set (a process that does
    not measure it, such as one that does not follow the projection, exports none)."""

    kind = "gauge"

    def render(self) -> list[str]:
        return super().render() if self._values else super().render()[:2]

    def set(self, *label_values: str, value: float) -> None:
        self.inc(*label_values, amount=value - self.value(*label_values))


class Registry:
    """The counters of this process, rendered together."""

    def __init__(self) -> None:
        self._counters: dict[str, Counter] = {}

    def counter(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Counter:
        return self._add(Counter(name, help_text, labels))

    def gauge(self, name: str, help_text: str) -> Gauge:
        gauge = Gauge(name, help_text)
        self._add(gauge)
        return gauge

    def _add(self, metric: Counter) -> Counter:
        if metric.name in self._counters:
            raise ValueError(f"metric {metric.name} registered twice")
        self._counters[metric.name] = metric
        return metric

    def render(self) -> str:
        return "".join(line + "\n" for c in self._counters.values() for line in c.render())


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


REGISTRY = Registry()
EVENTS = REGISTRY.counter(
    "rmos_events_total",
    "Events taken from the stream, by outcome: stored, duplicate, dead_lettered, retried.",
    ("outcome",),
)
GROUP_COMMITS = REGISTRY.counter("rmos_group_commits_total", "Group commits of event batches.")
DEAD_LETTERS = REGISTRY.counter(
    "rmos_dead_letters_total", "Dead letters stored on the DLQ stream, by code.", ("code",)
)
PATCHES = REGISTRY.counter(
    "rmos_explain_patches_total",
    "Explanation patches taken, by outcome: applied, or repeated (the same patch again).",
    ("outcome",),
)
PATCHES_IGNORED = REGISTRY.counter(  # named by CONTRACT section 4
    "rmos_explain_patches_ignored_total",
    "Explanation patches ignored: stale, for another request id than the pending one.",
)
API_REQUESTS = REGISTRY.counter(
    "rmos_api_requests_total", "API requests answered, by op and by code (ok or the error).",
    ("op", "code"),
)  # fmt: skip


PROJECTION_LAG = REGISTRY.gauge(
    "rmos_projection_lag_messages",
    "Messages of the runs bucket not yet applied to this host's list index (jetstream store).",
)
STORE_OUTAGE = REGISTRY.gauge(
    "rmos_store_outage",
    "1 while the store fails as a whole (ingest paused, messages held), else 0.",
)
STORE_RETRIES = REGISTRY.counter(
    "rmos_store_retries_total", "Writes retried because the store failed as a whole."
)
PROJECTION_LAG_SECONDS = REGISTRY.gauge(
    "rmos_projection_lag_seconds",
    "Age of the oldest change of the last batch applied to this host's list index; 0 idle.",
)


async def serve(host: str, port: int, registry: Registry = REGISTRY) -> asyncio.Server:
    """An HTTP server answering ``GET /metrics`` (404 for anything else); close it to stop."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT_S)
            method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
            target = rest.partition(" ")[0]
            if method == "GET" and target.split("?", 1)[0] == "/metrics":
                status, body = "200 OK", registry.render().encode()
            else:
                status, body = "404 Not Found", b"only GET /metrics here\n"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {CONTENT_TYPE}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # a client that sends nothing useful gets nothing
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, host, port)
    log.info("metrics on http://%s:%d/metrics", host, port)
    return server
