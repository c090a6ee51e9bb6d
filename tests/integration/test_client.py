"""The client as a producer meets it: connecting, and what it refuses before sending."""

from __future__ import annotations

import socket

import pytest

from tests.support import BOTH_STORES, WorkerProcess
from worker.client import RunsApiError, RunsClient

pytestmark = pytest.mark.integration


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class TestClient:
    """Failures are errors with a reason, never a hang."""

    async def test_unreachable_server(self) -> None:
        """Connecting to a port where nothing listens fails within the timeout."""
        with pytest.raises(ConnectionError, match="cannot reach NATS"):
            await RunsClient.connect(f"nats://127.0.0.1:{unused_port()}", timeout=0.5)

    @BOTH_STORES
    async def test_blob_over_max_payload(self, worker: WorkerProcess, client: RunsClient) -> None:
        """A blob the server could never carry is refused locally, with the contract's code."""
        with pytest.raises(RunsApiError) as info:
            await client.put_attachment(
                b"x" * (client.nc.max_payload + 1), kind="k", mime="m", filename="f"
            )
        assert info.value.code == "PAYLOAD_TOO_LARGE"
        assert client.nc.is_connected
