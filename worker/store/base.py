"""The persistence port: what the worker needs from a store, whatever keeps the bytes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from contracts.canonical import canonical
from contracts.transparency import leaf_hash
from worker.core.verify import Check

if TYPE_CHECKING:  # the one implementation the port names: see ``RunStore.log``
    from worker.store.merkle_log import MerkleLog


@dataclass(frozen=True, slots=True)
class Query:
    """A validated ``list`` request: equality filters, a time range, a page position."""

    equals: tuple[tuple[str, str], ...] = ()
    tool_id_prefix: str | None = None
    created_from: str | None = None
    created_to: str | None = None
    after: tuple[str, str] | None = None  # (created_at_utc, run_id) of the previous page's last
    limit: int = 50


@dataclass(frozen=True, slots=True)
class Change:
    """What a change function wants: the fields to set, and why (for the history)."""

    updates: dict[str, Any]
    change: str  # "explanation", "advisory" or "meta"
    by: str  # the message or request that caused it


# A change function: the current artifact in, the change it wants (None: none) out.
Decide = Callable[[dict[str, Any]], Change | None]


@dataclass(frozen=True, slots=True)
class Leaf:
    """One leaf of the Merkle log: its position in the tree and its record."""

    index: int
    record: dict[str, Any]

    @property
    def hash(self) -> bytes:
        return leaf_hash(self.record)


@dataclass(frozen=True, slots=True)
class NewRun:
    """An artifact to create if its run id is absent; ``data``: its canonical bytes, when the
    caller has them already (the intake encodes what it built without another walk)."""

    run_id: str
    artifact: dict[str, Any]
    data: bytes | None = None

    def encoded(self) -> bytes:
        """The bytes the run is stored as: ``canonical(artifact)``."""
        return canonical(self.artifact) if self.data is None else self.data


@dataclass(frozen=True, slots=True)
class Created:
    """The result of a create-if-absent: who holds the run id now."""

    created: bool  # True: this call created it; False: it existed already
    stored: dict[str, Any]  # the artifact on disk now (this one, or the one that was there)


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """What ``attachments.put`` kept beside the bytes."""

    sha256: str
    size_bytes: int
    kind: str
    mime: str
    filename: str  # "" when none was given


@dataclass(frozen=True, slots=True)
class StoredRun:
    """A run as an audit reads it: the artifact's stored bytes and its history's raw entries
    (every revision after the first, in the order the store keeps them)."""

    run_id: str
    artifact: bytes
    history: list[bytes]


class RunStore(Protocol):
    """Artifacts and blobs. Every id passed in has been validated against its pattern.

    Every revision a store makes durable is logged in the same write (a leaf of the Merkle log,
    ``contracts.transparency``): no acknowledged revision lacks its leaf, and no leaf names a
    revision that was never stored.
    """

    @property
    def log(self) -> MerkleLog:
        """This host's copy of the Merkle log (the log itself with the files store): heads and
        proofs. A prefix of the log, which ``log_reaches`` waits to grow."""

    async def log_reaches(self, size: int, timeout: float) -> bool:
        """Wait up to ``timeout`` s until ``log`` holds ``size`` leaves; False if it does not."""

    async def logged(self, run_id: str) -> list[Leaf]:
        """The run's leaves, by revision, as the log holds them now (not as a lagging copy)."""

    async def log_size(self) -> int:
        """How many leaves the log has now (the log itself, not this host's copy)."""

    async def catch_up_log(self) -> int:
        """Bring ``log`` up to the log's size now and return that size (an audit's start)."""

    def stored_runs(self) -> AsyncIterator[StoredRun]:
        """Every stored run (a full scan, for ``audit``; never for queries)."""

    async def adopt_unlogged(self) -> int:
        """Give every run that has no leaf (stored before the log existed) a leaf for the
        revision it is at, ``adopted`` unless that is revision 1; returns how many."""

    async def open(self) -> None:
        """Create the layout and remove leftovers of a crash; before the first message."""

    def close(self) -> None:
        """Release local resources (files, the index); after the last message."""

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        """The stored artifact, or None."""

    async def create_runs(self, runs: Sequence[NewRun]) -> list[Created]:
        """Create each run that is absent, durably and indexed, in one group commit.

        Run ids within one call are distinct. Raises ``TransientError`` when nothing may be acked.
        """

    async def verify_run(self, run_id: str) -> list[Check] | None:
        """Integrity checks recomputed from the stored bytes; None when the run is absent."""

    async def update_run(
        self, run_id: str, decide: Decide, *, expected_revision: int | None = None
    ) -> tuple[dict[str, Any], bool] | None:
        """Compare-and-swap one change; (artifact now, changed), or None when the run is absent.

        Raises ``RevisionConflictError`` when ``expected_revision`` is stale.
        """

    async def history(self, run_id: str) -> list[dict[str, Any]] | None:
        """Every revision of a run, oldest first; None when it is absent."""

    async def list_runs(self, query: Query) -> list[dict[str, Any]]:
        """Index summaries matching ``query``, newest first, up to ``query.limit + 1``."""

    async def blob_size(self, sha256: str) -> int | None:
        """The size of a stored blob, or None when it is not stored."""

    async def put_blob(self, data: bytes, *, kind: str, mime: str, filename: str) -> BlobInfo:
        """Store bytes under their SHA-256, durably, once; returns what is stored."""

    async def get_blob(self, sha256: str) -> tuple[bytes, BlobInfo] | None:
        """The bytes and metadata of a blob, or None."""
