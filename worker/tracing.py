"""W3C trace context through the pipeline, with OpenTelemetry when the ``[otel]`` extra is in.

A producer's ``traceparent`` header is continued by the worker's ingest span (validation and
the durable write), injected into the explanation request, continued by the explainer and into
its patch, and by the worker's patch span: one trace from the producer's publish to READY. API
requests get a span each. Headers are read and written with OpenTelemetry's configured
propagator (W3C trace context by default).

Without the extra, every function here is a no-op of a few nanoseconds: ``ENABLED`` is False.
With it, spans are recorded by whatever tracer provider the process has: none (the API's no-op
one) unless the program is started under ``opentelemetry-instrument`` (opentelemetry-distro,
configured by the standard ``OTEL_*`` variables) or a test sets one. Until one is set, a span
is made only to carry a context that came in with a message on to what is published inside it
(which the API's no-op spans do): the no-op spans of an event without one cost ~11 µs of the
worker's loop (``wanted`` is ~1.3 µs).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind
except ImportError:  # the [otel] extra is not installed
    ENABLED = False
else:
    ENABLED = True

TRACER = "rmos-runs"
_KINDS = ("consumer", "server", "internal")


@contextmanager
def continued(
    headers: Mapping[str, Any] | None,
    name: str,
    *,
    kind: str = "consumer",
    start_ns: int | None = None,
    attributes: Mapping[str, str | int] | None = None,
) -> Iterator[None]:
    """A span named ``name``, current inside the block, child of the trace context in
    ``headers`` (a new trace when they have none); ``start_ns`` backdates it (the time a batch
    was fetched, say)."""
    if not wanted(headers):
        yield
        return
    assert kind in _KINDS
    parent = propagate.extract({k: str(v) for k, v in (headers or {}).items()})
    with trace.get_tracer(TRACER).start_as_current_span(
        name,
        context=parent,
        kind=getattr(SpanKind, kind.upper()),
        start_time=start_ns,
        attributes=dict(attributes or {}),
    ):
        yield


def record(name: str, start_ns: int, end_ns: int, attributes: Mapping[str, str | int]) -> None:
    """A finished child span of the current one, timed after the fact (a batch's steps)."""
    if not ENABLED or not _recording():
        return
    span = trace.get_tracer(TRACER).start_span(name, start_time=start_ns, attributes=attributes)
    span.end(end_time=end_ns)


def inject(headers: dict[str, str] | None) -> dict[str, str] | None:
    """``headers`` with the current trace context added (``traceparent``), for a message about
    to be published; unchanged when there is none."""
    if not ENABLED:
        return headers
    carrier = dict(headers or {})
    propagate.inject(carrier)
    return carrier or headers


def wanted(headers: Mapping[str, Any] | None) -> bool:
    """Whether a span for a message with ``headers`` would record or carry anything (else
    :func:`continued` is a plain block: a hot path may skip even that)."""
    return ENABLED and (_recording() or _carries_context(headers))


def _recording() -> bool:
    """Whether the process has a tracer provider of its own (the API's proxy records nothing)."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def _carries_context(headers: Mapping[str, Any] | None) -> bool:
    """Whether ``headers`` have a field the configured propagator reads (``traceparent``...)."""
    if not headers:
        return False
    fields = propagate.get_global_textmap().fields
    return any(key in fields for key in headers)
