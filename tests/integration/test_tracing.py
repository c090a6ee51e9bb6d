"""One trace from a producer's publish to READY (issue 10, item 6), recorded by OpenTelemetry's
in-memory exporter: the worker and the reference explainer run in this process, on a real
nats-server, and the trace context travels only in the messages' ``traceparent`` headers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from contracts.canonical import derive_run_id
from contracts.subjects import Subjects
from tests.integration.test_lifecycle import run_at
from tests.support import event, eventually
from worker import tracing
from worker.app import Worker
from worker.client import RunsClient
from worker.explainer import Explainer
from worker.nats_server import NatsServer
from worker.reference import RuleExplainer
from worker.settings import Settings

pytestmark = pytest.mark.integration
EXPORTER = InMemorySpanExporter()
_PROVIDER = TracerProvider()
_PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))
trace.set_tracer_provider(_PROVIDER)  # once a process: this module is its only user


@pytest.fixture
async def pipeline(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[None]:
    """A worker and the reference explainer, in this process."""
    settings = Settings(nats_url=nats_server.url, data_dir=tmp_path / "data")
    worker = Worker(settings, nats_server.url)
    explainer = Explainer(RuleExplainer(), nats_server.url, Subjects())
    await worker.app.start()
    await explainer.start()
    EXPORTER.clear()
    try:
        yield
    finally:
        await explainer.stop()
        await worker.app.stop()


def spans_of(trace_id: int) -> dict[str, ReadableSpan]:
    spans = EXPORTER.get_finished_spans()
    return {s.name: s for s in spans if s.context is not None and s.context.trace_id == trace_id}


@pytest.mark.usefixtures("pipeline")
async def test_one_trace_from_publish_to_ready(client: RunsClient) -> None:
    assert tracing.ENABLED
    blocked = event("traced", status="BLOCKED", decision={"risk_level": "RED"})
    with trace.get_tracer("engine").start_as_current_span("engine publish") as publish:
        await client.publish_event(blocked)  # RunsClient injects the traceparent
    trace_id = publish.get_span_context().trace_id
    run_id = derive_run_id("engine-a", "traced")
    await run_at(client, run_id, explanation_status="READY")
    wanted = {"rmos.ingest", "rmos.validate", "rmos.store", "rmos.explain", "rmos.patch"}

    async def recorded() -> dict[str, ReadableSpan] | None:
        found = spans_of(trace_id)
        return found if wanted <= found.keys() else None

    spans = await eventually(recorded)

    def parent(name: str) -> int | None:
        context = spans[name].parent
        return context.span_id if context is not None else None

    def own(name: str) -> int | None:
        context = spans[name].context
        return context.span_id if context is not None else None

    assert parent("rmos.ingest") == publish.get_span_context().span_id
    assert parent("rmos.validate") == parent("rmos.store") == own("rmos.ingest")
    assert parent("rmos.explain") == own("rmos.ingest")  # via the request
    assert parent("rmos.patch") == own("rmos.explain")  # via the patch
    assert spans["rmos.ingest"].attributes is not None
    assert spans["rmos.ingest"].attributes["rmos.run_id"] == run_id


@pytest.mark.usefixtures("pipeline")
async def test_api_requests_have_spans(client: RunsClient) -> None:
    with trace.get_tracer("operator").start_as_current_span("operator asks") as asking:
        await client.create(event("created"))
        await client.get(derive_run_id("engine-a", "created"))
    trace_id = asking.get_span_context().trace_id

    async def recorded() -> dict[str, ReadableSpan] | None:
        found = spans_of(trace_id)
        return found if {"rmos.api.create", "rmos.api.get"} <= found.keys() else None

    spans = await eventually(recorded)
    for op in ("create", "get"):
        span = spans[f"rmos.api.{op}"]
        assert span.parent is not None
        assert span.parent.span_id == asking.get_span_context().span_id
        assert span.kind == trace.SpanKind.SERVER


def test_without_the_extra_nothing_happens(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``ENABLED`` off (the extra not installed), no header is added and no span made."""
    monkeypatch.setattr(tracing, "ENABLED", False)
    EXPORTER.clear()
    with trace.get_tracer("t").start_as_current_span("outer"):
        assert tracing.inject({"Nats-Msg-Id": "x"}) == {"Nats-Msg-Id": "x"}
        assert tracing.inject(None) is None
        with tracing.continued({"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}, "s"):
            pass
        tracing.record("r", 1, 2, {})
    assert [s.name for s in EXPORTER.get_finished_spans()] == ["outer"]
