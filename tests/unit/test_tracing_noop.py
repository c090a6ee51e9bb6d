"""Tracing with the [otel] extra but no tracer provider: no span work, the same propagation.

Run in a fresh interpreter each: ``tests/integration/test_tracing.py`` sets this process's
provider once, at import, and a provider cannot be unset.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("opentelemetry")

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from opentelemetry import trace
    from worker import tracing

    made = []
    real = trace.get_tracer

    def counting(*args, **kwargs):
        made.append(args[0])
        return real(*args, **kwargs)

    trace.get_tracer = counting
    headers = json.loads(sys.argv[1])
    with tracing.continued(headers, "rmos.ingest", attributes={"rmos.run_id": "r"}):
        tracing.record("rmos.store", 1, 2, {"rmos.batch": 1})
        injected = tracing.inject({"Nats-Msg-Id": "m"})
    print(json.dumps({"injected": injected, "tracers": len(made)}))
    """
)


def run(headers: dict[str, str] | None) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(headers)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    result: dict[str, object] = json.loads(out)
    return result


def test_no_context_no_provider_makes_no_span() -> None:
    result = run({"Nats-Msg-Id": "e"})
    assert result == {"injected": {"Nats-Msg-Id": "m"}, "tracers": 0}
    assert run(None) == result


def test_an_incoming_context_is_still_carried_on() -> None:
    """The API's no-op span carries the producer's context into what is published inside."""
    result = run({"traceparent": PARENT, "Nats-Msg-Id": "e"})
    assert result["injected"] == {"Nats-Msg-Id": "m", "traceparent": PARENT}
    assert result["tracers"] == 1  # the span that carries it; none for ``record``
