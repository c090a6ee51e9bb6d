"""What the worker sends is checked against its contract model first: an API success reply with
a field it does not document, or a value of the wrong type, is a bug of ours (INTERNAL); so is
an explanation request whose envelope is wrong, while the stored run inside travels as it is."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

import pytest
from pydantic import ValidationError

from contracts.api import CreateResult, ListPage
from contracts.subjects import Subjects
from worker.api import _ok
from worker.core.ingest import build_artifact, check_event
from worker.demo import demo_events
from worker.explanations import Explanations


def test_a_documented_reply_is_sent_as_given() -> None:
    reply = _ok(CreateResult, run_id="run_" + "a" * 32, revision=1, duplicate=False)
    assert json.loads(reply.body) == {
        "ok": True,
        "run_id": "run_" + "a" * 32,
        "revision": 1,
        "duplicate": False,
    }


def test_an_undocumented_field_is_refused() -> None:
    with pytest.raises(TypeError, match=r"CreateResult does not document \['extra'\]"):
        _ok(CreateResult, run_id="r", revision=1, duplicate=False, extra=1)


def test_a_value_of_the_wrong_type_is_refused() -> None:
    with pytest.raises(ValidationError):
        _ok(ListPage, items=[{"run_id": "r"}], next_cursor=None)


class _Broker:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    async def publish(self, data: bytes, subject: str, **kw: Any) -> None:
        self.sent.append((subject, json.loads(data)))


def _pending_run() -> dict[str, Any]:
    blocked = next(e for e in demo_events() if e["status"] == "BLOCKED")
    checked = check_event(
        json.dumps(blocked).encode(), subject_source="demo-engine", max_bytes=1 << 20
    )
    now = datetime(2026, 12, 2, tzinfo=UTC)
    return build_artifact(checked, parent=None, stored_at=now, now=now)


def _explanations(broker: _Broker) -> Explanations:
    settings = SimpleNamespace(subjects=Subjects(), publish_timeout_s=1.0)
    return Explanations(cast(Any, None), cast(Any, broker), cast(Any, settings))


async def test_a_run_of_an_older_schema_still_gets_its_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The artifact inside is sent as stored, even when today's model would refuse it."""
    run = _pending_run()
    del run["mode"]  # say, stored before the field was required
    broker = _Broker()
    await _explanations(broker).publish_request(run)
    [(subject, body)] = broker.sent
    assert subject == Subjects().explain_requested
    assert body["run"] == run
    assert "is not today's artifact schema" in caplog.text


async def test_a_broken_envelope_is_never_sent() -> None:
    run = {**_pending_run(), "explanation_request_id": 7}
    broker = _Broker()
    with pytest.raises(ValidationError):
        await _explanations(broker).publish_request(run)
    assert broker.sent == []
