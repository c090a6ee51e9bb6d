"""How many replicas the worker asks for, and how long it waits for a cluster to place them."""

from __future__ import annotations

import pytest
from nats.js.errors import APIError

from worker.streams import NOT_CLUSTERED, PlacementError, ensure_replicated

NO_PEERS = 10005  # "no suitable peers for placement": a peer still joining, or down


class Declarations:
    """A ``declare`` that fails with the given error codes, then succeeds."""

    def __init__(self, *failures: int) -> None:
        self.failures = list(failures)
        self.asked: list[int] = []

    async def __call__(self, replicas: int) -> None:
        self.asked.append(replicas)
        if self.failures:
            code = self.failures.pop(0)
            raise APIError(code=400, err_code=code, description=f"error {code}")


class TestEnsureReplicated:
    async def test_default_on_a_cluster(self) -> None:
        declare = Declarations()
        assert await ensure_replicated(declare, None, 3) == 3
        assert declare.asked == [3]

    async def test_default_on_a_single_server_is_one(self) -> None:
        declare = Declarations(NOT_CLUSTERED)
        assert await ensure_replicated(declare, None, 3) == 1
        assert declare.asked == [3, 1]

    async def test_asked_for_more_than_a_single_server_holds(self) -> None:
        with pytest.raises(PlacementError, match="cannot hold the streams with 3 replicas"):
            await ensure_replicated(Declarations(NOT_CLUSTERED), 3, 3)

    async def test_peers_joining(self) -> None:
        """A cluster still forming places the streams a moment later."""
        declare = Declarations(NO_PEERS)
        assert await ensure_replicated(declare, 3, 3, wait_s=5) == 3
        assert declare.asked == [3, 3]

    async def test_peers_never_there(self) -> None:
        with pytest.raises(PlacementError, match="error 10005"):
            await ensure_replicated(Declarations(*[NO_PEERS] * 10), 3, 3, wait_s=0.5)
