"""When the list index of a jetstream store may answer: its state, read as any process would."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from contracts.canonical import canonical
from worker.errors import UnavailableError
from worker.store.index import RunIndex
from worker.store.merkle_log import LogOutOfOrderError, MerkleLog
from worker.store.projection import BadLeafError, Feed, IndexSink, LogSink


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


def projection(index: RunIndex, last_seq: int = 100) -> Feed:
    """The list index's feed as a reader sees it (no follower runs)."""
    stream = cast(JetStreamContext, _Stream(last_seq))
    sink = IndexSink(index, "$KV.RMOS_RUNS.")
    return Feed(lambda: stream, "KV_RMOS_RUNS", "$KV.RMOS_RUNS.>", sink, name="list index")


class TestWaitApplied:
    """A reader waits for what its process wrote, never answers from a partial rebuild."""

    async def test_caught_up(self, index: RunIndex) -> None:
        index.clear({"stream_created": "t0", "applied_seq": "10", "rebuild_until": "4"})
        assert await projection(index).wait_applied(10, timeout=1) == 10

    async def test_rebuilding_is_unavailable(self, index: RunIndex) -> None:
        index.clear({"stream_created": "t0", "applied_seq": "5", "rebuild_until": "10"})
        with pytest.raises(UnavailableError, match="rebuilding"):
            await projection(index).wait_applied(0, timeout=1)

    async def test_behind_is_unavailable_after_the_wait(self, index: RunIndex) -> None:
        index.clear({"stream_created": "t0", "applied_seq": "3", "rebuild_until": "0"})
        with pytest.raises(UnavailableError, match="behind"):
            await projection(index).wait_applied(7, timeout=0.2)

    async def test_applied_while_waiting(self, index: RunIndex) -> None:
        index.clear({"stream_created": "t0", "applied_seq": "3", "rebuild_until": "0"})
        index.apply([], state={"applied_seq": "9"})
        assert await projection(index).wait_applied(9, timeout=1) == 9

    async def test_never_built_is_unavailable(self, index: RunIndex) -> None:
        """A new data dir before the follower's first look: not an empty page."""
        with pytest.raises(UnavailableError, match="being built"):
            await projection(index).wait_applied(0, timeout=1)

    async def test_write_gone_with_an_old_bucket(self, index: RunIndex) -> None:
        """Written at 50 into a bucket since made anew (now at 2): waiting for 2 is enough."""
        index.clear({"stream_created": "t1", "applied_seq": "2", "rebuild_until": "0"})
        assert await projection(index, last_seq=2).wait_applied(50, timeout=1) == 2


def leaf(seq: int, n: int = 1, revision: int | None = None, data: bytes | None = None) -> Msg:
    """The log stream's message at ``seq``: a leaf of run ``n`` (at revision ``seq``)."""
    record = {"run_id": f"run_{n:032x}", "revision": revision or seq, "at": "t"}
    sequence = SimpleNamespace(stream=seq, consumer=seq)
    data = canonical(record) if data is None else data
    return cast(Msg, SimpleNamespace(data=data, metadata=SimpleNamespace(sequence=sequence)))


@pytest.fixture
def copy(tmp_path: Path) -> Iterator[MerkleLog]:
    merkle_log = MerkleLog(tmp_path / "log.sqlite", flushed_by_caller=True)
    merkle_log.open()
    yield merkle_log
    merkle_log.close()


class TestLogSink:
    """The log stream's message at sequence ``s`` is the copy's leaf ``s - 1``."""

    def test_applied_at_its_positions(self, copy: MerkleLog) -> None:
        sink = LogSink(copy)
        sink.clear({"stream_created": "t0", "applied_seq": "0"})
        sink.apply([leaf(1), leaf(2)], {"applied_seq": "2"})
        sink.apply([leaf(3)], {"applied_seq": "3"})
        assert [(x.index, x.record["revision"]) for x in copy.leaves(0, 9)] == [
            (0, 1),
            (1, 2),
            (2, 3),
        ]
        assert sink.state()["applied_seq"] == "3"

    def test_position_is_the_size(self, copy: MerkleLog) -> None:
        """Whoever appended last (a catch-up beside the follower), the size is where to resume."""
        sink = LogSink(copy)
        sink.clear({"stream_created": "t0", "applied_seq": "0"})
        copy.apply(0, [{"run_id": "run_" + "0" * 32, "revision": 1}], {})
        assert sink.state() == {"stream_created": "t0", "applied_seq": "1"}

    def test_out_of_order(self, copy: MerkleLog) -> None:
        """A batch that does not start at the copy's size, or skips a sequence, is refused
        whole: the feed starts again from the copy's state."""
        sink = LogSink(copy)
        sink.clear({"stream_created": "t0", "applied_seq": "0"})
        with pytest.raises(LogOutOfOrderError):
            sink.apply([leaf(2)], {"applied_seq": "2"})
        with pytest.raises(LogOutOfOrderError, match="skips"):
            sink.apply([leaf(1), leaf(3)], {"applied_seq": "3"})
        assert copy.size() == 0

    @pytest.mark.parametrize(
        "bad",
        [leaf(2, data=b"not json"), leaf(2, data=b"[1]"), leaf(2, data=b"{}"), leaf(2, revision=1)],
        ids=["not-json", "not-an-object", "no-run-id", "second-leaf-of-a-revision"],
    )
    def test_no_leaf(self, copy: MerkleLog, bad: Msg) -> None:
        """A message the copy cannot hold stops it before its batch (not the follower)."""
        sink = LogSink(copy)
        sink.clear({"stream_created": "t0", "applied_seq": "0"})
        sink.apply([leaf(1)], {"applied_seq": "1"})
        with pytest.raises(BadLeafError, match="no leaf"):
            sink.apply([bad, leaf(3)], {"applied_seq": "3"})
        assert copy.size() == 1
