"""Checking runs against the Merkle log (CONTRACT section 9). Pure: no I/O, no clock.

Two users: ``verify`` checks one run (``run_checks``: its artifact and history as served against
its leaves), and ``rmos-runs audit`` the whole store: one pass over the log's leaves
(``LeafPass``) recomputes the tree and every checkpoint's root; independently, each stored run
is held against its leaves (``Audit.run``); at the end (``Audit.conclude``) the checkpoints are
held against the pass's roots and the log's runs that are not in the store are named.

The audit hashes stored bytes as they are first: the store writes canonical JSON, so an
artifact or history entry whose bytes hash to the logged SHA-256 is the logged one (the hashes
are of canonical JSON), and only what does not match is parsed to say what differs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from contracts import merkle
from contracts.canonical import CanonicalError, sha256_json
from contracts.transparency import ADOPTED, Checkpoint, LeafRecord, signature_valid
from worker.core.verify import Check

# -- one run (verify) ------------------------------------------------------------------------


def run_checks(
    artifact: dict[str, Any], entries: Sequence[dict[str, Any]], leaves: Sequence[dict[str, Any]]
) -> list[Check]:
    """``log.revisions``, ``log.artifact``, ``log.history``: the artifact and its history
    entries (oldest first, the ``created`` one included) as the store serves them, against the
    run's leaf records (by revision). Never raises, whatever the stored artifact holds."""
    revision = artifact.get("revision")
    logged = [leaf["revision"] for leaf in leaves]
    first = logged[0] if leaves and leaves[0]["change"] == ADOPTED else 1
    good = isinstance(revision, int) and not isinstance(revision, bool) and revision >= first
    held = range(first, revision + 1) if isinstance(revision, int) and good else range(0)
    whole = good and len(held) == len(logged) and logged == list(held)  # no list of 2**53
    shown = f"revisions {first} to {revision}" if good else f"revision {_short(revision)}"
    checks = [Check("log.revisions", whole, logged, shown)]
    last = leaves[-1] if leaves else None
    digest = _digest(artifact)
    expected = last["artifact_sha256"] if last else "a leaf for the run"
    checks.append(Check("log.artifact", last is not None and digest == expected, expected, digest))
    by_revision = {leaf["revision"]: leaf["entry_sha256"] for leaf in leaves}
    differ = [
        e.get("revision")
        for e in entries
        if e.get("revision") in held and by_revision.get(e.get("revision")) != _digest(e)
    ]
    served = [e.get("revision") for e in entries]
    missing = [r for r in by_revision if r not in served and r in held]
    ok = not differ and not missing
    actual = "as logged" if ok else f"differ at revisions {sorted(set(differ + missing), key=str)}"
    checks.append(Check("log.history", ok, "every revision's entry as logged", actual))
    return checks


def _digest(document: Any) -> str:
    """``sha256(document)``, or why it has none (a tampered value with no canonical form)."""
    try:
        return sha256_json(document)
    except CanonicalError as exc:
        return f"not computable: {exc}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# -- the whole store (audit) -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing the audit found wrong; ``run_id`` None for the log as a whole."""

    kind: str
    detail: str
    run_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "run_id": self.run_id, "detail": self.detail}


@dataclass(slots=True)
class LeafPass:
    """The audit's pass over the log's leaves, fed in order with ``leaf``: the tree recomputed,
    its root at each ``wanted`` size (the checkpoints'), each run's last logged revision, and
    what is wrong with the log itself. Plain data, so it can run in another process."""

    wanted: frozenset[int] = frozenset()
    findings: list[Finding] = field(default_factory=list)
    count: int = 0
    tree: merkle.CompactRange = field(default_factory=merkle.CompactRange)
    roots: dict[int, bytes] = field(default_factory=dict)  # checkpoint size -> root at it
    latest: dict[str, int] = field(default_factory=dict)  # run id -> last logged revision

    def __post_init__(self) -> None:
        if 0 in self.wanted:
            self.roots[0] = merkle.EMPTY_ROOT

    def leaf(self, index: int, data: bytes) -> None:
        """The leaf at ``index`` (fed in order from 0), as the log's record bytes."""
        if index != self.count:
            self._found("log.gap", f"leaf {self.count} is missing (the next is {index})")
            self.count = index  # go on: what follows is still checked
        self.tree.append(merkle.leaf_hash(data))
        self.count += 1
        if self.count in self.wanted:
            self.roots[self.count] = self.tree.root()
        try:
            record = LeafRecord.model_validate_json(data)
        except ValidationError:
            self._found("log.leaf", f"leaf {index} is not a leaf record")
            return
        before = self.latest.get(record.run_id, 0)
        adopted = before == 0 and record.change == ADOPTED  # older than the log
        if record.revision != before + 1 and not adopted:
            detail = f"leaf {index} logs revision {record.revision} after revision {before}"
            self._found("log.order", detail, record.run_id)
        self.latest[record.run_id] = max(before, record.revision)

    def _found(self, kind: str, detail: str, run_id: str | None = None) -> None:
        self.findings.append(Finding(kind, detail, run_id))


@dataclass(slots=True)
class Audit:
    """An audit: ``run`` for each stored run (their leaves looked up by the caller), in any
    order with the ``LeafPass`` over the log, then ``conclude`` with that pass, once.
    ``findings`` then holds what is wrong: the log's first, then the checkpoints', the runs'."""

    public_key: Ed25519PublicKey | None
    findings: list[Finding] = field(default_factory=list)
    leaves: int = 0
    runs: int = 0
    revisions: int = 0
    root: bytes = merkle.EMPTY_ROOT
    _seen: set[str] = field(default_factory=set)

    def conclude(
        self, leaves: LeafPass, checkpoints: Sequence[Checkpoint], log_root: bytes
    ) -> None:
        """Hold each checkpoint against the recomputed tree and name the logged runs that no
        longer exist; ``log_root`` is the head the log's stored nodes give (what proofs are
        computed from)."""
        runs, self.findings = self.findings, list(leaves.findings)
        self.leaves, self.root = leaves.count, leaves.tree.root()
        if log_root != self.root:
            detail = f"the stored subtree hashes give root {log_root.hex()}, the leaves "
            self._found("log.nodes", detail + self.root.hex())
        for checkpoint in checkpoints:
            name = f"checkpoint {checkpoint.tree_size} ({checkpoint.issued_at})"
            if self.public_key is not None and not signature_valid(checkpoint, self.public_key):
                self._found("checkpoint.signature", f"{name}: not signed by the given key")
            if checkpoint.tree_size > leaves.count:
                detail = f"{name} covers {checkpoint.tree_size} leaves; the log has {leaves.count}"
                self._found("log.truncated", detail)
            elif leaves.roots.get(checkpoint.tree_size) != checkpoint.root:
                detail = f"{name}: root {checkpoint.root_hash}, the log's leaves give another"
                self._found("log.rewritten", detail)
        self.findings += runs
        for run_id in sorted(leaves.latest.keys() - self._seen):
            self._found("run.deleted", "in the log, but not in the store", run_id)

    def run(
        self,
        run_id: str,
        artifact: bytes,
        history: Sequence[bytes],
        leaves: Sequence[dict[str, Any]],
    ) -> None:
        """One stored run: its artifact's bytes and its history entries' (revisions 2.., in the
        store's order), against its leaf records by revision."""
        self.runs += 1
        self._seen.add(run_id)
        if not leaves:
            self._found("run.unlogged", "stored, but not in the log", run_id)
            return
        last = leaves[-1]
        self.revisions += last["revision"]
        if hashlib.sha256(artifact).hexdigest() != last["artifact_sha256"]:
            self._artifact_differs(run_id, artifact, leaves)
        self._history(run_id, history, leaves)

    def _artifact_differs(self, run_id: str, data: bytes, leaves: Sequence[dict[str, Any]]) -> None:
        try:
            artifact = json.loads(data)
            digest, revision = sha256_json(artifact), artifact.get("revision")
        except (ValueError, TypeError, AttributeError):
            self._found("run.unreadable", "the stored artifact is not a JSON object", run_id)
            return
        last = leaves[-1]["revision"]
        if digest == leaves[-1]["artifact_sha256"]:
            return  # the same artifact, stored in another (non-canonical) form
        if not isinstance(revision, int) or revision == last:
            detail = f"revision {last} differs from its leaf (rewritten)"
        elif revision > last:
            detail = f"at revision {revision}; the log has up to revision {last}"
        else:
            detail = f"at revision {revision}; the log has revision {last} (rolled back)"
        self._found("run.rewritten", detail, run_id)

    def _history(
        self, run_id: str, history: Sequence[bytes], leaves: Sequence[dict[str, Any]]
    ) -> None:
        wanted = {leaf["entry_sha256"]: leaf["revision"] for leaf in leaves if leaf["revision"] > 1}
        matched: dict[int, int] = {}  # revision -> position of its logged entry
        stray: list[tuple[int, int]] = []  # (position, revision) of entries not logged
        for position, line in enumerate(history):
            revision = wanted.get(hashlib.sha256(line).hexdigest())
            if revision is not None:
                matched[revision] = position
                continue
            try:
                entry = json.loads(line)
                stray.append((position, int(entry["revision"])))
            except (ValueError, TypeError, KeyError):
                continue  # torn by a crash: readers skip it too
        missing = sorted(set(wanted.values()) - matched.keys())
        if missing:
            self._found("history.missing", f"no logged entry for revisions {missing}", run_id)
        order = [matched[r] for r in sorted(matched)]
        if order != sorted(order):
            self._found("history.reordered", "entries are out of revision order", run_id)
        shadowed = sorted({r for p, r in stray if r in matched and p > matched[r]})
        if shadowed:
            detail = f"entries of revisions {shadowed} written after the logged ones (rewritten)"
            self._found("history.rewritten", detail, run_id)

    def _found(self, kind: str, detail: str, run_id: str | None = None) -> None:
        self.findings.append(Finding(kind, detail, run_id))
