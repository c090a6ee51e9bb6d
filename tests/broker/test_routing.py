"""Routing and validation of the API subjects, on FastStream's in-memory broker.

``TestNatsBroker`` ignores acks, naks, Nats-Msg-Id and JetStream metadata, so nothing about
delivery is tested here: only which subject reaches which handler and what it answers.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from faststream.nats import TestNatsBroker

from contracts.canonical import derive_run_id
from tests.support import event
from worker.app import Worker
from worker.settings import Settings


@pytest.fixture
async def worker(tmp_path: Path) -> AsyncIterator[Worker]:
    app = Worker(Settings(data_dir=tmp_path, subject_prefix="acme.runs"), "nats://127.0.0.1:9")
    await app.store.open()
    yield app
    app.store.close()


async def call(broker: Any, subject: str, body: bytes) -> dict[str, Any]:
    reply = await broker.request(body, subject, timeout=5)
    answer: dict[str, Any] = json.loads(reply.body)
    return answer


class TestApiRouting:
    """Every ``<prefix>.v1.api.<op>`` subject reaches the API and gets one JSON reply."""

    async def test_create_then_get(self, worker: Worker) -> None:
        """``create`` then ``get`` round-trip under a custom subject prefix."""
        async with TestNatsBroker(worker.broker) as broker:
            created = await call(
                broker, "acme.runs.v1.api.create", json.dumps(event("e1")).encode()
            )
            assert created["ok"] is True
            assert created["run_id"] == derive_run_id("engine-a", "e1")
            got = await call(
                broker, "acme.runs.v1.api.get", json.dumps({"run_id": created["run_id"]}).encode()
            )
            assert got["run"]["event_id"] == "e1"

    @pytest.mark.parametrize(
        ("subject", "body", "code"),
        [
            ("acme.runs.v1.api.get", b"{}", "INVALID_REQUEST"),
            ("acme.runs.v1.api.get", b'{"run_id": 5}', "INVALID_REQUEST"),
            ("acme.runs.v1.api.get", b"\x00\x01", "INVALID_REQUEST"),
            ("acme.runs.v1.api.attachments.nope", b"{}", "INVALID_REQUEST"),
            ("acme.runs.v1.api.create", b'{"schema": "rmos.run_event.v1"}', "SCHEMA_VIOLATION"),
        ],
    )
    async def test_errors(self, worker: Worker, subject: str, body: bytes, code: str) -> None:
        """Malformed requests and unknown ops get the contract's error reply."""
        async with TestNatsBroker(worker.broker) as broker:
            reply = await call(broker, subject, body)
        assert reply["ok"] is False
        assert reply["error"]["code"] == code
        assert reply["error"]["message"]
