"""``MerkleLog``: the log's leaves and subtree hashes in one SQLite file (CONTRACT section 9).

Every root and proof is held against an in-memory recomputation (``CompactRange`` over the
leaves' bytes in position order) and verified with ``contracts.merkle``'s RFC 9162 verifiers;
several OS processes appending to one file at once must leave one tree, never a fork.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from contracts import merkle
from contracts.canonical import canonical
from contracts.transparency import LEAF_SCHEMA, leaf_hash
from worker.store.merkle_log import LogOutOfOrderError, MerkleLog


def run_id(n: int) -> str:
    return f"run_{n:032x}"


def record(run: int, revision: int, tag: str = "") -> dict[str, Any]:
    """A leaf record (the shape ``leaf_record`` gives) of revision ``revision`` of run ``run``."""

    def digest(what: str) -> str:
        return hashlib.sha256(f"{run}/{revision}/{what}{tag}".encode()).hexdigest()

    return {
        "schema": LEAF_SCHEMA,
        "run_id": run_id(run),
        "revision": revision,
        "change": "created" if revision == 1 else "meta",
        "at": f"2026-12-01T10:00:{revision % 60:02d}.000000+00:00",
        "content_sha256": digest("content"),
        "artifact_sha256": digest("artifact"),
        "entry_sha256": digest("entry"),
    }


def open_log(path: Path) -> MerkleLog:
    log = MerkleLog(path)
    log.open()
    return log


@pytest.fixture
def log(tmp_path: Path) -> Iterator[MerkleLog]:
    merkle_log = open_log(tmp_path / "log.sqlite")
    yield merkle_log
    merkle_log.close()


def recomputed(log: MerkleLog) -> list[bytes]:
    """The head of every prefix of the log (index: size), from its leaves' bytes alone."""
    tree = merkle.CompactRange()
    heads = [tree.root()]
    for _, data in log.scan():
        tree.append(merkle.leaf_hash(data))
        heads.append(tree.root())
    return heads


def fill(log: MerkleLog, n: int) -> list[dict[str, Any]]:
    """Append ``n`` records (revisions 1.. of runs 0..) in batches of 1 to 7."""
    records = [record(i // 3, i % 3 + 1) for i in range(n)]
    done, width = 0, 1
    while done < n:
        batch = records[done : done + width]
        assert log.append(batch) == list(range(done, done + len(batch)))
        done += len(batch)
        width = width % 7 + 1
    return records


class TestAppend:
    def test_positions_dense_from_zero(self, log: MerkleLog) -> None:
        assert log.size() == 0
        assert log.append([]) == []
        assert log.append([record(1, 1)]) == [0]
        assert log.append([record(2, 1), record(1, 2), record(3, 1)]) == [1, 2, 3]
        assert log.append([record(2, 2)]) == [4]
        assert log.size() == 5
        assert [leaf.index for leaf in log.leaves(0, 5)] == [0, 1, 2, 3, 4]

    def test_same_revision_again(self, log: MerkleLog) -> None:
        """A (run id, revision) already logged keeps its position and its first record; no new
        leaf (a retried commit)."""
        assert log.append([record(1, 1), record(2, 1)]) == [0, 1]
        before = log.head()
        assert log.append([record(2, 1)]) == [1]
        assert log.append([record(1, 1, tag="another")]) == [0]
        assert log.head() == before
        assert log.append([record(3, 1), record(1, 1), record(1, 2)]) == [2, 0, 3]
        assert log.size() == 4
        assert [leaf.record for leaf in log.leaves_of(run_id(1))] == [record(1, 1), record(1, 2)]
        assert log.append([record(1, 1), record(1, 1)]) == [0, 0]  # both logged: no conflict
        assert log.has(run_id(1), 2)
        assert not log.has(run_id(1), 3)

    def test_two_records_for_one_revision(self, log: MerkleLog) -> None:
        """Two new records for one revision in one append: refused, nothing appended."""
        log.append([record(1, 1)])
        before = log.head()
        with pytest.raises(ValueError, match="two records for one revision"):
            log.append([record(2, 1), record(3, 1), record(2, 1, tag="x")])
        with pytest.raises(ValueError, match="two records for one revision"):
            log.append([record(3, 1), record(3, 1)])
        assert log.head() == before
        assert not log.has(run_id(2), 1)
        assert log.append([record(2, 1)]) == [1]  # the log is usable after the refusal

    def test_stored_bytes_are_canonical(self, log: MerkleLog) -> None:
        records = fill(log, 10)
        assert [data for _, data in log.scan()] == [canonical(r) for r in records]
        for leaf, original in zip(log.leaves(0, 10), records, strict=True):
            assert leaf.record == original
            assert leaf.hash == leaf_hash(original) == merkle.leaf_hash(canonical(original))

    def test_persists(self, tmp_path: Path) -> None:
        path = tmp_path / "log.sqlite"
        first = open_log(path)
        fill(first, 12)
        head = first.head()
        first.close()
        again = open_log(path)
        try:
            assert again.head() == head
            assert again.append([record(0, 1)]) == [0]
            assert again.append([record(100, 1)]) == [12]
        finally:
            again.close()


class TestTree:
    def test_roots_agree_with_a_recomputation(self, log: MerkleLog) -> None:
        assert log.head() == (0, merkle.EMPTY_ROOT)
        fill(log, 37)
        heads = recomputed(log)
        assert [log.root(size) for size in range(38)] == heads
        assert log.head() == (37, heads[37])

    def test_inclusion_proofs_verify(self, log: MerkleLog) -> None:
        fill(log, 37)
        heads = recomputed(log)
        hashes = [leaf.hash for leaf in log.leaves(0, 37)]
        for size in (1, 2, 3, 5, 8, 16, 17, 31, 32, 36, 37):
            for index in range(size):
                proof = log.inclusion(index, size)
                assert merkle.verify_inclusion(hashes[index], index, size, proof, heads[size])
                other = hashes[(index + 1) % size]
                if other != hashes[index]:
                    assert not merkle.verify_inclusion(other, index, size, proof, heads[size])

    def test_consistency_proofs_verify(self, log: MerkleLog) -> None:
        fill(log, 37)
        heads = recomputed(log)
        for new in range(38):
            for old in range(new + 1):
                proof = log.consistency(old, new)
                assert merkle.verify_consistency(old, new, heads[old], heads[new], proof)
                if 0 < old < new:
                    assert not merkle.verify_consistency(
                        old, new, heads[old - 1], heads[new], proof
                    )

    def test_sizes_beyond_the_log(self, log: MerkleLog) -> None:
        fill(log, 5)
        for call in (
            lambda: log.root(6),
            lambda: log.inclusion(0, 6),
            lambda: log.consistency(1, 6),
            lambda: log.consistency(0, 100),
        ):
            with pytest.raises(ValueError, match="fewer than"):
                call()
        with pytest.raises(ValueError, match="not in a tree"):
            log.inclusion(5, 5)
        with pytest.raises(ValueError, match="no consistency proof"):
            log.consistency(4, 3)
        assert log.root(5) == recomputed(log)[5]  # the largest size it has is fine


class TestCopy:
    """``apply`` and ``clear``: the log as a copy of a stream kept elsewhere."""

    def test_apply_in_order(self, log: MerkleLog) -> None:
        log.apply(0, [record(1, 1), record(2, 1)], {"seq": "2"})
        log.apply(2, [record(1, 2)], {"seq": "3", "stream_created": "t0"})
        assert log.size() == 3
        assert log.state() == {"seq": "3", "stream_created": "t0"}
        assert log.root(3) == recomputed(log)[3]
        assert [leaf.index for leaf in log.leaves_of(run_id(1))] == [0, 2]

    @pytest.mark.parametrize("first", [0, 1, 3, 10])
    def test_apply_at_the_wrong_position(self, log: MerkleLog, first: int) -> None:
        log.apply(0, [record(1, 1), record(2, 1)], {"seq": "2"})
        before = log.head()
        with pytest.raises(LogOutOfOrderError, match=f"leaf {first} applied to a log of 2"):
            log.apply(first, [record(3, 1)], {"seq": "99"})
        assert log.head() == before
        assert log.state() == {"seq": "2"}

    def test_apply_of_a_logged_revision(self, log: MerkleLog) -> None:
        """A copy never holds a revision twice: the whole apply is refused."""
        log.apply(0, [record(1, 1)], {"seq": "1"})
        with pytest.raises(sqlite3.IntegrityError):
            log.apply(1, [record(2, 1), record(1, 1, tag="dup")], {"seq": "3"})
        assert log.size() == 1
        assert log.state() == {"seq": "1"}

    def test_clear(self, log: MerkleLog) -> None:
        fill(log, 9)
        log.apply(9, [record(50, 1)], {"seq": "10", "old": "x"})
        log.clear({"stream_created": "t1"})
        assert log.head() == (0, merkle.EMPTY_ROOT)
        assert log.state() == {"stream_created": "t1"}
        assert log.leaves(0, 100) == []
        assert log.leaves_of(run_id(0)) == []
        assert list(log.scan()) == []
        # Built again from nothing: no subtree hash of the old tree is left to collide with.
        log.apply(0, [record(7, 1), record(8, 1), record(7, 2)], {"seq": "3"})
        assert log.root(3) == recomputed(log)[3]
        assert log.inclusion(2, 3) == merkle.inclusion_proof(
            2, 3, _nodes_of([leaf.hash for leaf in log.leaves(0, 3)])
        )


def _nodes_of(hashes: list[bytes]) -> merkle.NodeAt:
    nodes = merkle.appended(0, hashes, lambda level, index: b"")
    return lambda level, index: nodes[(level, index)]


class TestReads:
    def test_leaves_of_by_revision(self, log: MerkleLog) -> None:
        """A run's leaves by revision, whatever their positions."""
        log.append([record(1, 2), record(2, 1)])
        log.append([record(1, 1), record(1, 3)])
        leaves = log.leaves_of(run_id(1))
        assert [(leaf.index, leaf.record["revision"]) for leaf in leaves] == [
            (2, 1),
            (0, 2),
            (3, 3),
        ]
        assert [leaf.record for leaf in leaves] == [record(1, 1), record(1, 2), record(1, 3)]
        assert log.leaves_of(run_id(99)) == []

    def test_leaves_range(self, log: MerkleLog) -> None:
        records = fill(log, 10)
        assert [leaf.record for leaf in log.leaves(3, 7)] == records[3:7]
        assert [leaf.index for leaf in log.leaves(8, 50)] == [8, 9]
        assert log.leaves(5, 5) == []
        assert log.leaves(10, 20) == []

    @pytest.mark.parametrize(("n", "chunk"), [(0, 4), (3, 4), (8, 4), (9, 4), (25, 1), (25, 7)])
    def test_scan(self, log: MerkleLog, n: int, chunk: int) -> None:
        """Every leaf once, in order, across chunk boundaries (an exact multiple included)."""
        records = fill(log, n)
        scanned = list(log.scan(chunk))
        assert [index for index, _ in scanned] == list(range(n))
        assert [data for _, data in scanned] == [canonical(r) for r in records]


# -- several processes, one file -------------------------------------------------------------

PROCESSES = 3
BATCHES = 200
PER_BATCH = 5


def _append_in_child(path: str, worker: int, start: Any, out: Any) -> None:
    """Append this worker's records (runs ``worker * 10_000 + batch``), a batch at a time,
    each batch also naming the previous one again (a retried commit); report positions."""
    log = MerkleLog(Path(path))
    log.open()
    try:
        start.wait(30)  # a barrier: every process is open before any appends
        positions: dict[tuple[str, int], int] = {}
        previous: list[dict[str, Any]] = []
        for batch in range(BATCHES):
            run = worker * 10_000 + batch
            fresh = [record(run, revision) for revision in range(1, PER_BATCH + 1)]
            got = log.append([*previous[:1], *fresh])
            if previous:
                key = (previous[0]["run_id"], previous[0]["revision"])
                assert got[0] == positions[key], "a logged revision moved"
                got = got[1:]
            for r, at in zip(fresh, got, strict=True):
                positions[(r["run_id"], r["revision"])] = at
            previous = fresh
            time.sleep(0.002 * (batch % 3))  # give the others a turn: SQLite's busy wait polls
        out.put((worker, sorted(positions.items(), key=lambda kv: kv[1])))
    finally:
        log.close()


def test_processes_append_to_one_tree(tmp_path: Path) -> None:
    """Three processes appending disjoint records at once: every record exactly once, at
    positions 0..n-1, the root that of the leaves in position order, every proof sound."""
    path = tmp_path / "log.sqlite"
    open_log(path).close()  # the schema; the children still open (WAL, schema) concurrently
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [
        ctx.Process(target=_append_in_child, args=(str(path), worker, start, out))
        for worker in range(1, PROCESSES + 1)
    ]
    for proc in procs:
        proc.start()
    try:
        reports = dict(out.get(timeout=60) for _ in procs)
        for proc in procs:
            proc.join(30)
            assert proc.exitcode == 0
    finally:
        for proc in procs:  # none outlives a failure (a child that raised never reports)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
    n = PROCESSES * BATCHES * PER_BATCH

    log = open_log(path)
    try:
        leaves = log.leaves(0, n + 1)
        assert [leaf.index for leaf in leaves] == list(range(n))
        keys = [(leaf.record["run_id"], leaf.record["revision"]) for leaf in leaves]
        expected = {
            (run_id(worker * 10_000 + batch), revision)
            for worker in range(1, PROCESSES + 1)
            for batch in range(BATCHES)
            for revision in range(1, PER_BATCH + 1)
        }
        assert len(keys) == len(set(keys)) == n
        assert set(keys) == expected
        # Each process was told the position its record really has, and a batch's records
        # are contiguous and in order (one transaction each).
        at = {key: leaf.index for key, leaf in zip(keys, leaves, strict=True)}
        for worker, positions in reports.items():
            assert len(positions) == BATCHES * PER_BATCH
            for (rid, revision), position in positions:
                assert at[(rid, revision)] == position, (worker, rid, revision)
            firsts = [p for (_, revision), p in positions if revision == 1]
            for first in firsts:
                assert [p for _, p in positions if first <= p < first + PER_BATCH] == list(
                    range(first, first + PER_BATCH)
                )
        # They did append at the same time (not one after the other): whose leaf each is
        # changes hundreds of times along the log (2 would be one process after another).
        owner = {p: worker for worker, positions in reports.items() for _, p in positions}
        turns = sum(owner[i] != owner[i + 1] for i in range(n - 1))
        assert turns > 20, f"the processes took {turns + 1} turns only"
        heads = recomputed(log)
        assert log.head() == (n, heads[n])
        hashes = [leaf.hash for leaf in leaves]
        for index in [*range(0, n, 97), n - 1]:
            proof = log.inclusion(index, n)
            assert merkle.verify_inclusion(hashes[index], index, n, proof, heads[n])
        for old in (1, 5, 64, 1000, 2047, n - 1):
            proof = log.consistency(old, n)
            assert merkle.verify_consistency(old, n, heads[old], heads[n], proof)
    finally:
        log.close()
