"""When the list index of a jetstream store may answer: its state, read as any process would."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from worker.errors import UnavailableError
from worker.store.index import RunIndex
from worker.store.projection import Projection


class _Stream:
    """The one call the readers make: how far the stream goes now."""

    def __init__(self, last_seq: int) -> None:
        self.last_seq = last_seq

    async def stream_info(self, name: str) -> Any:
        return SimpleNamespace(state=SimpleNamespace(last_seq=self.last_seq))


@pytest.fixture
def index(tmp_path: Path) -> Iterator[RunIndex]:
    runs = RunIndex(tmp_path / "index.sqlite")
    runs.open()
    yield runs
    runs.close()


def projection(index: RunIndex, tmp_path: Path, last_seq: int = 100) -> Projection:
    stream = cast(JetStreamContext, _Stream(last_seq))

    async def no_follower() -> Client:
        raise AssertionError("readers never connect")

    return Projection(
        lambda: stream, no_follower, "KV_RMOS_RUNS", "$KV.RMOS_RUNS.", index, tmp_path / "lock"
    )


class TestWaitApplied:
    """A reader waits for what its process wrote, never answers from a partial rebuild."""

    async def test_caught_up(self, index: RunIndex, tmp_path: Path) -> None:
        index.clear({"stream_created": "t0", "applied_seq": "10", "rebuild_until": "4"})
        assert await projection(index, tmp_path).wait_applied(10, timeout=1) == 10

    async def test_rebuilding_is_unavailable(self, index: RunIndex, tmp_path: Path) -> None:
        index.clear({"stream_created": "t0", "applied_seq": "5", "rebuild_until": "10"})
        with pytest.raises(UnavailableError, match="rebuilding"):
            await projection(index, tmp_path).wait_applied(0, timeout=1)

    async def test_behind_is_unavailable_after_the_wait(
        self, index: RunIndex, tmp_path: Path
    ) -> None:
        index.clear({"stream_created": "t0", "applied_seq": "3", "rebuild_until": "0"})
        with pytest.raises(UnavailableError, match="behind"):
            await projection(index, tmp_path).wait_applied(7, timeout=0.2)

    async def test_applied_while_waiting(self, index: RunIndex, tmp_path: Path) -> None:
        index.clear({"stream_created": "t0", "applied_seq": "3", "rebuild_until": "0"})
        index.apply([], state={"applied_seq": "9"})
        assert await projection(index, tmp_path).wait_applied(9, timeout=1) == 9

    async def test_never_built_is_unavailable(self, index: RunIndex, tmp_path: Path) -> None:
        """A new data dir before the follower's first look: not an empty page."""
        with pytest.raises(UnavailableError, match="being built"):
            await projection(index, tmp_path).wait_applied(0, timeout=1)

    async def test_write_gone_with_an_old_bucket(self, index: RunIndex, tmp_path: Path) -> None:
        """Written at 50 into a bucket since made anew (now at 2): waiting for 2 is enough."""
        index.clear({"stream_created": "t1", "applied_seq": "2", "rebuild_until": "0"})
        assert await projection(index, tmp_path, last_seq=2).wait_applied(50, timeout=1) == 2
