"""``worker.core.log_checks``: a run against its leaves (``run_checks``, for ``verify``) and the
whole store against the log (``Audit``, for ``rmos-runs audit``), CONTRACT section 9.

The inputs are what the files store holds: artifacts built from real events and revised by
``revisions.propose``, stored as ``revisions.encode`` bytes, history lines as ``_append_line``
writes them, leaves as ``leaf_record`` gives them and the log keeps them (canonical JSON).
Each tampering test asserts the exact list of finding kinds, so that a tampering found under
another name, or a clean store found faulty, fails.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from contracts import merkle
from contracts.canonical import canonical
from contracts.transparency import Checkpoint, leaf_record, sign_checkpoint
from worker.core.ingest import build_artifact, check_event
from worker.core.log_checks import Audit, Finding, LeafPass, run_checks
from worker.core.timefmt import utc_text
from worker.store.base import Change
from worker.store.revisions import created_entry, encode, propose

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(100, 132)))


# -- a store, as the files store keeps it ------------------------------------------------------


def new_artifact(event_id: str, feasibility: dict[str, Any]) -> dict[str, Any]:
    body = {
        "schema": "rmos.run_event.v1",
        "event_id": event_id,
        "source": "engine-a",
        "mode": "m",
        "tool_id": "t",
        "event_type": "x",
        "status": "OK",
        "feasibility": feasibility,
        "decision": {"risk_level": "GREEN"},
    }
    checked = check_event(json.dumps(body).encode(), subject_source="engine-a", max_bytes=1 << 16)
    return build_artifact(checked, parent=None, stored_at=T0, now=T0)


@dataclass
class Run:
    """One run: its artifact at each revision and each revision's history entry (index 0:
    revision 1 and its ``created`` entry)."""

    artifacts: list[dict[str, Any]]
    entries: list[dict[str, Any]]

    @classmethod
    def create(cls, event_id: str, feasibility: dict[str, Any] | None = None) -> Run:
        artifact = new_artifact(event_id, feasibility or {"d": 1})
        return cls([artifact], [created_entry(artifact)])

    @property
    def run_id(self) -> str:
        return str(self.artifacts[0]["run_id"])

    @property
    def current(self) -> dict[str, Any]:
        return self.artifacts[-1]

    def propose(self, updates: dict[str, Any], change: str, by: str) -> tuple[dict[str, Any], ...]:
        """The next revision and its entry, as every store's compare-and-swap makes them."""
        now = T0 + timedelta(seconds=len(self.artifacts))
        proposed = propose(
            self.run_id, self.current, lambda _: Change(updates, change, by), None, now
        )
        assert proposed is not None
        return proposed

    def change(self, updates: dict[str, Any], change: str = "meta", by: str = "req") -> None:
        artifact, entry = self.propose(updates, change, by)
        self.artifacts.append(artifact)
        self.entries.append(entry)

    def record(self, revision: int) -> dict[str, Any]:
        """The leaf of a revision."""
        return leaf_record(self.artifacts[revision - 1], self.entries[revision - 1])

    def leaf(self, revision: int) -> bytes:
        """That leaf's bytes in the log (``MerkleLog`` stores canonical JSON)."""
        return canonical(self.record(revision))

    def stored(self) -> bytes:
        """The artifact file's bytes."""
        return encode(self.current)

    def lines(self) -> list[bytes]:
        """The history file's lines: one per revision after the first, oldest first."""
        return [encode(entry) for entry in self.entries[1:]]


@dataclass
class Store:
    """Runs on disk (artifact bytes, history lines) and the log's leaves in order."""

    runs: dict[str, Run]
    files: dict[str, tuple[bytes, list[bytes]]]
    log: list[bytes]

    @classmethod
    def of(cls, runs: Iterable[Run], log: list[bytes]) -> Store:
        by_id = {run.run_id: run for run in runs}
        return cls(by_id, {r.run_id: (r.stored(), r.lines()) for r in by_id.values()}, log)

    def leaves_of(self, run_id: str) -> list[dict[str, Any]]:
        """A run's leaves by revision, as the audit reads them (``MerkleLog.logged_of``: only
        the revision and the two hashes)."""
        records = []
        for data in self.log:
            try:
                record = json.loads(data)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("run_id") == run_id:
                records.append(record)
        keys = ("revision", "artifact_sha256", "entry_sha256")
        by_revision = sorted(records, key=lambda r: int(r["revision"]))
        return [{k: r[k] for k in keys} for r in by_revision]


def sample() -> tuple[Store, Run, Run, Run]:
    """Three runs: A at revision 3 (floats in its event), B at 1, C at 2 (non-ASCII meta);
    their leaves interleaved as they were written: A1 B1 A2 C1 A3 C2."""
    a = Run.create("evt-a", {"d": 1.0, "ratio": 0.5})
    b = Run.create("evt-b")
    c = Run.create("evt-c")
    a.change({"meta": {"operator": "kim"}}, "meta", "req-1")
    c.change({"meta": {"note": "ünïcode ✓"}}, "meta", "req-2")
    a.change({"explanation_status": "PENDING"}, "explanation", "msg-7")
    log = [a.leaf(1), b.leaf(1), a.leaf(2), c.leaf(1), a.leaf(3), c.leaf(2)]
    return Store.of([a, b, c], log), a, b, c


def head(log: Sequence[bytes], size: int | None = None) -> bytes:
    """The root of the first ``size`` leaves (what the log's stored nodes give)."""
    tree = merkle.CompactRange()
    for data in log[: len(log) if size is None else size]:
        tree.append(merkle.leaf_hash(data))
    return tree.root()


def checkpoint(log: Sequence[bytes], size: int, key: Ed25519PrivateKey = KEY) -> Checkpoint:
    issued = utc_text(T0 + timedelta(minutes=size))
    return sign_checkpoint(
        key, origin="rmos.runs", tree_size=size, root=head(log, size), issued_at=issued
    )


def audit(
    store: Store,
    checkpoints: Sequence[Checkpoint] = (),
    *,
    public: Ed25519PublicKey | None = None,
    log_root: bytes | None = None,
    indices: Sequence[int] | None = None,
) -> Audit:
    """An audit in ``rmos-runs audit``'s steps; ``log_root`` defaults to the head of the
    leaves as given (stored nodes that agree with them), ``indices`` to 0, 1, 2…"""
    result = Audit(KEY.public_key() if public is None else public)
    leaves = LeafPass(frozenset(c.tree_size for c in checkpoints))
    for index, data in zip(indices or range(len(store.log)), store.log, strict=True):
        leaves.leaf(index, data)
    for run_id, (artifact, history) in store.files.items():
        result.run(run_id, artifact, [line for line in history if line], store.leaves_of(run_id))
    result.conclude(leaves, checkpoints, head(store.log) if log_root is None else log_root)
    return result


def kinds(result: Audit) -> list[str]:
    return [f.kind for f in result.findings]


def found(result: Audit) -> list[tuple[str, str | None]]:
    return [(f.kind, f.run_id) for f in result.findings]


# -- a clean store -----------------------------------------------------------------------------


class TestClean:
    def test_no_findings_and_counts(self) -> None:
        """Every run, revision and leaf accounted for, every checkpoint (the empty tree's too)
        holding: no finding."""
        store, _, _, _ = sample()
        checkpoints = [checkpoint(store.log, n) for n in (0, 1, 2, 5, 6)]
        result = audit(store, checkpoints)
        assert result.findings == []
        assert (result.leaves, result.runs, result.revisions) == (6, 3, 6)
        assert result.root == head(store.log)

    def test_empty(self) -> None:
        """No runs and no leaves: nothing to find, the empty tree's head."""
        store = Store({}, {}, [])
        result = audit(store, [checkpoint([], 0)])
        assert result.findings == []
        assert (result.leaves, result.runs, result.revisions) == (0, 0, 0)
        assert result.root == merkle.EMPTY_ROOT

    @pytest.mark.parametrize(
        "dump",
        [
            lambda d: json.dumps(d, indent=2).encode(),
            lambda d: json.dumps(dict(reversed(list(d.items())))).encode(),
            lambda d: json.dumps(d, ensure_ascii=True, separators=(", ", ": ")).encode(),
        ],
    )
    def test_non_canonical_artifact_bytes(self, dump: Any) -> None:
        """An artifact stored in other bytes but equal content is the logged one."""
        store, a, _, c = sample()
        for run in (a, c):
            data = dump(run.current)
            assert data not in (encode(run.current), canonical(run.current))
            assert json.loads(data) == run.current
            store.files[run.run_id] = (data, run.lines())
        assert audit(store).findings == []

    def test_finding_as_dict(self) -> None:
        run_id = "run_" + "0" * 32
        finding = Finding("run.deleted", "gone", run_id)
        assert finding.as_dict() == {"kind": "run.deleted", "run_id": run_id, "detail": "gone"}


# -- a stored run against its leaves -----------------------------------------------------------


class TestArtifact:
    def test_rewritten(self) -> None:
        """The current revision's artifact changed in place (its revision unchanged)."""
        store, a, _, _ = sample()
        for forged in ({**a.current, "status": "ERROR"}, {**a.current, "meta": {}}):
            store.files[a.run_id] = (encode(forged), a.lines())
            result = audit(store)
            assert found(result) == [("run.rewritten", a.run_id)]
            assert "revision 3 differs from its leaf (rewritten)" in result.findings[0].detail

    def test_rewritten_without_revision(self) -> None:
        store, a, _, _ = sample()
        forged = {k: v for k, v in a.current.items() if k != "revision"}
        store.files[a.run_id] = (encode(forged), a.lines())
        assert found(audit(store)) == [("run.rewritten", a.run_id)]

    def test_rolled_back(self) -> None:
        """The artifact put back to an older revision (its history left as it was)."""
        store, a, _, _ = sample()
        store.files[a.run_id] = (encode(a.artifacts[0]), a.lines())
        result = audit(store)
        assert found(result) == [("run.rewritten", a.run_id)]
        assert "at revision 1; the log has revision 3 (rolled back)" in result.findings[0].detail

    def test_revision_not_logged(self) -> None:
        """A revision stored (artifact and history line) without its leaf."""
        store, a, _, _ = sample()
        a.change({"meta": {"operator": "eve"}}, "meta", "req-x")
        store.files[a.run_id] = (a.stored(), a.lines())
        result = audit(store)
        assert found(result) == [("run.rewritten", a.run_id)]
        assert "at revision 4; the log has up to revision 3" in result.findings[0].detail

    @pytest.mark.parametrize(
        "data",
        [b'{"run_id": "run_', b"[1, 2]", b"null", b'"text"', b"\xff\xfe{}", b'{"x": NaN}', b""],
    )
    def test_unreadable(self, data: bytes) -> None:
        """Bytes that are no JSON object (torn, another type, not UTF-8, NaN)."""
        store, _, b, _ = sample()
        store.files[b.run_id] = (data, [])
        assert found(audit(store)) == [("run.unreadable", b.run_id)]


class TestRuns:
    def test_unlogged(self) -> None:
        """A run in the store without a single leaf."""
        store, _, _, _ = sample()
        d = Run.create("evt-d")
        store.runs[d.run_id] = d
        store.files[d.run_id] = (d.stored(), [])
        result = audit(store)
        assert found(result) == [("run.unlogged", d.run_id)]
        assert result.runs == 4
        assert result.revisions == 6  # an unlogged run's revisions are not counted

    def test_deleted(self) -> None:
        """A logged run gone from the store (its file and history)."""
        store, _, b, c = sample()
        del store.files[b.run_id]
        del store.files[c.run_id]
        result = audit(store)
        assert found(result) == [("run.deleted", r) for r in sorted([b.run_id, c.run_id])]
        assert result.runs == 1


class TestHistory:
    def test_line_missing(self) -> None:
        """A logged revision's history line removed."""
        store, a, _, _ = sample()
        lines = a.lines()
        store.files[a.run_id] = (a.stored(), [lines[1]])
        result = audit(store)
        assert found(result) == [("history.missing", a.run_id)]
        assert "[2]" in result.findings[0].detail

    def test_line_changed(self) -> None:
        """A logged line rewritten in place: its revision's logged entry is gone."""
        store, a, _, _ = sample()
        forged = encode({**a.entries[2], "by": "someone else"})
        store.files[a.run_id] = (a.stored(), [a.lines()[0], forged])
        result = audit(store)
        assert found(result) == [("history.missing", a.run_id)]
        assert "[3]" in result.findings[0].detail

    def test_reordered(self) -> None:
        store, a, _, _ = sample()
        store.files[a.run_id] = (a.stored(), a.lines()[::-1])
        assert found(audit(store)) == [("history.reordered", a.run_id)]

    def test_shadowed_by_a_later_line(self) -> None:
        """A line for a logged revision written after the logged one: readers take the last."""
        store, a, _, _ = sample()
        forged = encode({**a.entries[1], "by": "someone else"})
        store.files[a.run_id] = (a.stored(), [*a.lines(), forged])
        result = audit(store)
        assert found(result) == [("history.rewritten", a.run_id)]
        assert "[2]" in result.findings[0].detail

    def test_torn_lines_ignored(self) -> None:
        """A line torn by a crash (ended by the next append, or last) is skipped, as readers
        skip it."""
        store, a, _, c = sample()
        torn = encode(a.entries[2])[:25]
        store.files[a.run_id] = (a.stored(), [a.lines()[0], torn, a.lines()[1], torn])
        store.files[c.run_id] = (c.stored(), [*c.lines(), b'{"revision": 3, "at": "20'])
        assert audit(store).findings == []

    def test_retried_line_before_the_logged_one(self) -> None:
        """A change whose line was written but whose artifact never was (a crash), then
        retried: the earlier line of the same revision is superseded, not a finding."""
        store, a, _, _ = sample()
        crashed = encode({**a.entries[1], "by": "req-crashed", "changed": ["meta.x"]})
        assert crashed not in a.lines()
        store.files[a.run_id] = (a.stored(), [crashed, *a.lines()])
        assert audit(store).findings == []

    def test_line_beyond_the_artifact(self) -> None:
        """The line of a revision the artifact never reached (crash before the rename)."""
        store, _, _, c = sample()
        _, entry = c.propose({"meta": {"note": "later"}}, "meta", "req-9")
        store.files[c.run_id] = (c.stored(), [*c.lines(), encode(entry)])
        assert audit(store).findings == []


# -- the log -----------------------------------------------------------------------------------


class TestLeaves:
    def test_out_of_order(self) -> None:
        """A run's leaves logged A3 before A2."""
        store, a, b, c = sample()
        store.log = [a.leaf(1), b.leaf(1), a.leaf(3), c.leaf(1), a.leaf(2), c.leaf(2)]
        result = audit(store)
        assert found(result) == [("log.order", a.run_id), ("log.order", a.run_id)]
        assert "leaf 2 logs revision 3 after revision 1" in result.findings[0].detail

    def test_first_leaf_not_the_creation(self) -> None:
        """A run whose first leaf is revision 2 (its creation's leaf removed)."""
        store, a, b, c = sample()
        store.log = [b.leaf(1), a.leaf(2), c.leaf(1), a.leaf(3), c.leaf(2)]
        result = audit(store)
        assert found(result) == [("log.order", a.run_id)]
        assert "logs revision 2 after revision 0" in result.findings[0].detail

    @pytest.mark.parametrize(
        "data",
        [
            b"not json",
            b"[1, 2]",
            b"\xff",
            b'{"schema": "rmos.log_leaf.v1"}',
            canonical({**Run.create("evt-x").record(1), "extra": 1}),
            canonical({**Run.create("evt-x").record(1), "revision": 0}),
            canonical({**Run.create("evt-x").record(1), "schema": "rmos.log_leaf.v2"}),
            canonical({**Run.create("evt-x").record(1), "run_id": "run_x"}),
            canonical({**Run.create("evt-x").record(1), "revision": "1"}),  # strict
        ],
    )
    def test_not_a_record(self, data: bytes) -> None:
        """A leaf that is no leaf record (appended to the log)."""
        store, *_ = sample()
        store.log.append(data)
        result = audit(store)
        assert found(result) == [("log.leaf", None)]
        assert result.findings[0].detail == "leaf 6 is not a leaf record"
        assert result.leaves == 7

    def test_gap(self) -> None:
        """A leaf's row deleted, with its run, while the stored nodes still hold it: the gap,
        and the nodes' root no longer the leaves'."""
        store, *_ = sample()
        d = Run.create("evt-d")
        full = [*store.log[:3], d.leaf(1), *store.log[3:]]
        indices = [0, 1, 2, 4, 5, 6]
        result = audit(store, indices=indices, log_root=head(full))
        assert kinds(result) == ["log.gap", "log.nodes"]
        assert result.findings[0].detail == "leaf 3 is missing (the next is 4)"
        assert result.leaves == 7

    def test_gap_alone(self) -> None:
        """The gap itself, with nodes that agree with the leaves present."""
        store, *_ = sample()
        result = audit(store, indices=[0, 1, 2, 3, 5, 6])
        assert found(result) == [("log.gap", None)]

    def test_nodes_disagree(self) -> None:
        """A run's artifact and its leaf rewritten together, the stored subtree hashes left:
        the run holds against its (forged) leaf, but the nodes' root is not the leaves'."""
        store, a, _, _ = sample()
        original = head(store.log)
        forged = {**a.current, "status": "ERROR"}
        store.log[4] = canonical(leaf_record(forged, a.entries[2]))
        store.files[a.run_id] = (encode(forged), a.lines())
        result = audit(store, log_root=original)
        assert found(result) == [("log.nodes", None)]
        # A checkpoint signed before the rewrite names it too; one of an earlier size does not.
        old = [a.leaf(1), *store.log[1:4], a.leaf(3), *store.log[5:]]
        result = audit(store, [checkpoint(old, 2), checkpoint(old, 6)], log_root=original)
        assert kinds(result) == ["log.nodes", "log.rewritten"]


class TestCheckpoints:
    def test_rewritten(self) -> None:
        """The log rebuilt whole after a rewrite (nodes and leaves agree): the checkpoints
        signed before it that cover the rewritten leaf do not hold."""
        store, a, _, _ = sample()
        before = list(store.log)
        signed = [checkpoint(before, n) for n in (2, 4, 5, 6)]
        forged = {**a.current, "status": "ERROR"}
        store.log[4] = canonical(leaf_record(forged, a.entries[2]))
        store.files[a.run_id] = (encode(forged), a.lines())
        result = audit(store, signed)
        assert found(result) == [("log.rewritten", None), ("log.rewritten", None)]
        details = [f.detail for f in result.findings]
        assert details[0].startswith("checkpoint 5 (")
        assert details[1].startswith("checkpoint 6 (")

    def test_truncated(self) -> None:
        """A checkpoint of more leaves than the log has: its last leaf removed with its run."""
        store, *_ = sample()
        e = Run.create("evt-e")
        signed = checkpoint([*store.log, e.leaf(1)], 7)
        result = audit(store, [checkpoint(store.log, 6), signed])
        assert found(result) == [("log.truncated", None)]
        assert "covers 7 leaves; the log has 6" in result.findings[0].detail

    def test_another_key(self) -> None:
        """A checkpoint that holds, signed by a key other than the given one."""
        store, *_ = sample()
        signed = [checkpoint(store.log, 3), checkpoint(store.log, 6, OTHER_KEY)]
        result = audit(store, signed)
        assert found(result) == [("checkpoint.signature", None)]
        assert result.findings[0].detail.startswith("checkpoint 6 (")
        # Held against the key that did sign it, it is a finding no more (and ours is).
        result = audit(store, signed, public=OTHER_KEY.public_key())
        assert found(result) == [("checkpoint.signature", None)]
        assert result.findings[0].detail.startswith("checkpoint 3 (")

    def test_relabelled(self) -> None:
        """A signed checkpoint given another size and that size's root: its signature fails
        (and only that: the root is right)."""
        store, *_ = sample()
        relabelled = checkpoint(store.log, 6).model_copy(
            update={"tree_size": 4, "root_hash": head(store.log, 4).hex()}
        )
        assert found(audit(store, [relabelled])) == [("checkpoint.signature", None)]

    def test_no_key_no_signature_check(self) -> None:
        """Without a public key only the roots are checked."""
        store, *_ = sample()
        result, leaves = Audit(None), LeafPass(frozenset([6]))
        for index, data in enumerate(store.log):
            leaves.leaf(index, data)
        for run_id, (artifact, history) in store.files.items():
            result.run(run_id, artifact, history, store.leaves_of(run_id))
        result.conclude(leaves, [checkpoint(store.log, 6, OTHER_KEY)], head(store.log))
        assert result.findings == []


# -- one run, as verify checks it ---------------------------------------------------------------


def failing(checks: Sequence[Any]) -> list[str]:
    return [c.name for c in checks if not c.ok]


class TestRunChecks:
    def test_consistent(self) -> None:
        _, a, b, _ = sample()
        for run in (a, b):
            records = [run.record(r) for r in range(1, len(run.artifacts) + 1)]
            checks = run_checks(run.current, run.entries, records)
            assert [c.name for c in checks] == ["log.revisions", "log.artifact", "log.history"]
            assert failing(checks) == []
        checks = run_checks(a.current, a.entries, [a.record(1), a.record(2), a.record(3)])
        assert checks[0].actual == "revisions 1 to 3"
        assert checks[1].actual == checks[1].expected == a.record(3)["artifact_sha256"]
        assert checks[2].actual == "as logged"

    def test_artifact_rewritten(self) -> None:
        _, a, _, _ = sample()
        records = [a.record(1), a.record(2), a.record(3)]
        checks = run_checks({**a.current, "status": "ERROR"}, a.entries, records)
        assert failing(checks) == ["log.artifact"]

    def test_entry_changed(self) -> None:
        _, a, _, _ = sample()
        records = [a.record(1), a.record(2), a.record(3)]
        entries = [a.entries[0], {**a.entries[1], "by": "someone else"}, a.entries[2]]
        checks = run_checks(a.current, entries, records)
        assert failing(checks) == ["log.history"]
        assert checks[2].actual == "differ at revisions [2]"

    def test_created_entry_changed(self) -> None:
        _, a, _, _ = sample()
        records = [a.record(1), a.record(2), a.record(3)]
        entries = [{**a.entries[0], "at": utc_text(T0 - timedelta(days=1))}, *a.entries[1:]]
        assert failing(run_checks(a.current, entries, records)) == ["log.history"]

    def test_entry_not_served(self) -> None:
        """A logged revision's entry missing from the history served."""
        _, a, _, _ = sample()
        records = [a.record(1), a.record(2), a.record(3)]
        checks = run_checks(a.current, [a.entries[0], a.entries[2]], records)
        assert failing(checks) == ["log.history"]
        assert checks[2].actual == "differ at revisions [2]"

    def test_revision_leaf_missing(self) -> None:
        """Revision 2 has no leaf: the revisions check fails, and its entry is not as logged."""
        _, a, _, _ = sample()
        checks = run_checks(a.current, a.entries, [a.record(1), a.record(3)])
        assert failing(checks) == ["log.revisions", "log.history"]
        assert (checks[0].expected, checks[0].actual) == ([1, 3], "revisions 1 to 3")

    def test_current_leaf_missing(self) -> None:
        """The current revision has no leaf: nothing of it is as logged."""
        _, a, _, _ = sample()
        checks = run_checks(a.current, a.entries, [a.record(1), a.record(2)])
        assert failing(checks) == ["log.revisions", "log.artifact", "log.history"]

    def test_rolled_back(self) -> None:
        """Served at revision 2 while the log has 3."""
        _, a, _, _ = sample()
        records = [a.record(1), a.record(2), a.record(3)]
        checks = run_checks(a.artifacts[1], a.entries[:2], records)
        assert failing(checks) == ["log.revisions", "log.artifact"]

    def test_no_leaves(self) -> None:
        _, _, b, _ = sample()
        checks = run_checks(b.current, b.entries, [])
        assert failing(checks) == ["log.revisions", "log.artifact", "log.history"]
        assert checks[1].expected == "a leaf for the run"

    @pytest.mark.parametrize("revision", [None, "3", 0, -1])
    def test_revision_not_a_count(self, revision: Any) -> None:
        _, a, _, _ = sample()
        records = [a.record(1), a.record(2), a.record(3)]
        checks = run_checks({**a.current, "revision": revision}, a.entries, records)
        assert failing(checks) == ["log.revisions", "log.artifact"]

    @pytest.mark.parametrize("value", [float("nan"), float("inf"), 2**60])
    def test_artifact_without_canonical_form(self, value: Any) -> None:
        """A stored artifact that parses (Python's json takes NaN) but has no canonical JSON:
        the artifact check fails, as ``verify_artifact``'s do; verify must not error out."""
        _, a, _, _ = sample()
        records = [a.record(1), a.record(2), a.record(3)]
        forged = {**a.current, "feasibility": {"d": value}}
        checks = run_checks(forged, a.entries, records)
        assert failing(checks) == ["log.artifact"]


def test_huge_revision_is_a_failed_check_not_a_huge_list() -> None:
    """A tampered revision of 2**53 - 1 fails ``log.revisions`` at once, its answer short."""
    _, a, _, _ = sample()
    forged = {**a.current, "revision": 2**53 - 1}
    checks = run_checks(forged, a.entries, [a.record(1), a.record(2), a.record(3)])
    assert checks[0].ok is False
    assert checks[0].actual == f"revisions 1 to {2**53 - 1}"
