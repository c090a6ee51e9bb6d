"""Server lists of ``RMOS_NATS_URL``."""

from __future__ import annotations

import pytest

from worker.connection import servers


class TestServers:
    def test_one(self) -> None:
        assert servers("nats://127.0.0.1:4222") == ["nats://127.0.0.1:4222"]

    def test_a_cluster(self) -> None:
        """Comma-separated, spaces and empty entries ignored."""
        given = "nats://a:4222, nats://b:4222,,nats://c:4222 "
        assert servers(given) == ["nats://a:4222", "nats://b:4222", "nats://c:4222"]

    def test_none(self) -> None:
        with pytest.raises(ValueError, match="no NATS server URL"):
            servers(" , ")
