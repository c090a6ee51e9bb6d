"""Routing and validation of the API subjects: a worker in this process, on a real server,
answering under a custom subject prefix."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from contracts.api import ERROR_HEADER
from contracts.canonical import derive_run_id
from tests.support import event
from worker.app import Worker
from worker.nats_server import NatsServer
from worker.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
async def nc(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Client]:
    """A connection to a server with a worker (prefix ``acme.runs``) answering on it."""
    settings = Settings(data_dir=tmp_path / "data", subject_prefix="acme.runs")
    worker = Worker(settings, nats_server.url)
    await worker.app.start()
    conn = await nats.connect(nats_server.url)
    try:
        yield conn
    finally:
        await conn.close()
        await worker.app.stop()


async def call(nc: Client, subject: str, body: bytes) -> dict[str, Any]:
    reply = await nc.request(subject, body, timeout=5)
    answer: dict[str, Any] = json.loads(reply.data)
    return answer


class TestApiRouting:
    """Every ``<prefix>.v1.api.<op>`` subject reaches the API and gets one JSON reply."""

    async def test_create_then_get(self, nc: Client) -> None:
        """``create`` then ``get`` round-trip under a custom subject prefix."""
        created = await call(nc, "acme.runs.v1.api.create", json.dumps(event("e1")).encode())
        assert created["ok"] is True
        assert created["run_id"] == derive_run_id("engine-a", "e1")
        got = await call(
            nc, "acme.runs.v1.api.get", json.dumps({"run_id": created["run_id"]}).encode()
        )
        assert got["run"]["event_id"] == "e1"

    @pytest.mark.parametrize(
        ("subject", "body", "code"),
        [
            ("acme.runs.v1.api.get", b"{}", "INVALID_REQUEST"),
            ("acme.runs.v1.api.get", b'{"run_id": 5}', "INVALID_REQUEST"),
            ("acme.runs.v1.api.get", b"\x00\x01", "INVALID_REQUEST"),
            ("acme.runs.v1.api.get", b"", "INVALID_REQUEST"),
            ("acme.runs.v1.api.attachments.nope", b"{}", "INVALID_REQUEST"),
            ("acme.runs.v1.api.create", b'{"schema": "rmos.run_event.v1"}', "SCHEMA_VIOLATION"),
        ],
    )
    async def test_errors(self, nc: Client, subject: str, body: bytes, code: str) -> None:
        """Malformed requests and unknown ops get the contract's error reply."""
        reply = await call(nc, subject, body)
        assert reply["ok"] is False
        assert reply["error"]["code"] == code
        assert reply["error"]["message"]

    async def test_error_header(self, nc: Client) -> None:
        """A reply carries its headers: the error code, for clients that read only headers."""
        reply = await nc.request("acme.runs.v1.api.get", b"{}", timeout=5)
        assert reply.headers is not None
        assert reply.headers[ERROR_HEADER] == "INVALID_REQUEST"
