"""The intake: event deliveries into the store by batches, the one path for events and ``create``.

Pure checks come from ``worker.core.ingest``; this module adds what needs the store: attachment
look-ups, the parent run, one group commit for the whole batch, and the idempotency rule (the run
id is the identity, ``hashes.event_sha256`` tells a duplicate from a conflict).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from contracts.codes import DeadLetterCode
from worker.core.ingest import CheckedEvent, build_artifact, check_event, encoded
from worker.core.timefmt import utc_now
from worker.errors import RejectedError, StoreOutageError
from worker.store.base import NewRun, RunStore


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event as the transport handed it over."""

    data: bytes
    subject_source: str | None  # the subject's last token; None for ``api.create``
    stored_at: datetime  # when JetStream stored it (or when the request arrived)


@dataclass(frozen=True, slots=True)
class Stored:
    """The event is durable as ``run_id`` (now, or already before: ``duplicate``)."""

    run_id: str
    revision: int
    duplicate: bool
    run: dict[str, Any]  # the artifact as stored


Outcome = Stored | RejectedError


@dataclass(eq=False, slots=True)
class Prepared:
    """A checked and built batch, not yet stored."""

    outcomes: list[Outcome | None]  # set for the rejected deliveries
    checked: dict[int, CheckedEvent]  # delivery index → a valid event
    firsts: dict[str, int]  # run id → the delivery whose artifact is proposed
    artifacts: dict[str, dict[str, Any]]  # run id → the proposed artifact


class Intake:
    """Turns deliveries into durable artifacts or rejections, a batch at a time."""

    def __init__(
        self, store: RunStore, *, max_event_bytes: int, clock: Callable[[], datetime] = utc_now
    ) -> None:
        self._store = store
        self._max_event_bytes = max_event_bytes
        self._clock = clock
        self._uncommitted: list[Prepared] = []

    async def ingest(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        """One outcome per delivery, in order. Raises ``TransientError`` when nothing is durable."""
        prepared = await self.prepare(deliveries)
        try:
            return await self.commit(prepared)
        finally:
            self.discard(prepared)

    async def prepare(self, deliveries: Sequence[Delivery]) -> Prepared:
        """Check and build a batch (CPU; no write). Its artifacts serve as parents to later
        batches until :meth:`commit` has stored them, so the next batch can be prepared while
        this one commits."""
        outcomes: list[Outcome | None] = [None] * len(deliveries)
        checked: dict[int, CheckedEvent] = {}
        for i, delivery in enumerate(deliveries):
            try:
                checked[i] = check_event(
                    delivery.data,
                    subject_source=delivery.subject_source,
                    max_bytes=self._max_event_bytes,
                )
            except RejectedError as exc:
                outcomes[i] = exc
        await self._check_attachments(checked, outcomes)

        firsts: dict[str, int] = {}
        for i, event in checked.items():
            firsts.setdefault(event.run_id, i)
        artifacts = await self._build(deliveries, checked, firsts)
        prepared = Prepared(outcomes, checked, firsts, artifacts)
        self._uncommitted.append(prepared)
        return prepared

    async def commit(self, prepared: Prepared) -> list[Outcome]:
        """Store a prepared batch in one group commit and resolve every outcome.

        After a ``StoreOutageError`` the batch stays prepared (its artifacts still serve as
        parents): commit it again, or :meth:`discard` it."""
        firsts, outcomes = prepared.firsts, prepared.outcomes
        try:
            results = await self._store.create_runs(
                [_new_run(prepared, run_id, i) for run_id, i in firsts.items()]
            )
        except StoreOutageError:
            raise
        except BaseException:
            self.discard(prepared)
            raise
        self.discard(prepared)
        holders = dict(zip(firsts, results, strict=True))
        for i, event in prepared.checked.items():
            holder = holders[event.run_id]
            fresh = holder.created and firsts[event.run_id] == i
            outcomes[i] = _resolve(event, holder.stored, fresh)
        return [_known(o) for o in outcomes]

    def discard(self, prepared: Prepared) -> None:
        """Forget a prepared batch: committed, or given up (idempotent)."""
        if prepared in self._uncommitted:
            self._uncommitted.remove(prepared)

    async def _parent(self, run_id: str, batch: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
        for artifacts in (batch, *(p.artifacts for p in reversed(self._uncommitted))):
            if run_id in artifacts:
                return artifacts[run_id]
        return await self._store.get_run(run_id)

    async def _check_attachments(
        self, checked: dict[int, CheckedEvent], outcomes: list[Outcome | None]
    ) -> None:
        sizes: dict[str, int | None] = {}
        for i, event in list(checked.items()):
            for sha256, size in event.attachments:
                if sha256 not in sizes:
                    sizes[sha256] = await self._store.blob_size(sha256)
                if sizes[sha256] != size:
                    found = sizes[sha256]
                    why = "is not in the blob store" if found is None else f"has {found} bytes"
                    outcomes[i] = RejectedError(
                        DeadLetterCode.UNKNOWN_ATTACHMENT,
                        f"attachment {sha256} {why}; the event says {size}",
                    )
                    del checked[i]
                    break

    async def _build(
        self,
        deliveries: Sequence[Delivery],
        checked: dict[int, CheckedEvent],
        firsts: dict[str, int],
    ) -> dict[str, dict[str, Any]]:
        """The artifact of each run id's first event; parents from batches or the store."""
        now = self._clock()
        artifacts: dict[str, dict[str, Any]] = {}
        for run_id, i in firsts.items():
            event = checked[i]
            parent = None
            if event.parent_run_id is not None:
                parent = await self._parent(event.parent_run_id, artifacts)
            artifacts[run_id] = build_artifact(
                event, parent=parent, stored_at=deliveries[i].stored_at, now=now
            )
        return artifacts


def _new_run(prepared: Prepared, run_id: str, first: int) -> NewRun:
    artifact = prepared.artifacts[run_id]
    return NewRun(run_id, artifact, encoded(artifact, prepared.checked[first].plain))


def _known(outcome: Outcome | None) -> Outcome:
    assert outcome is not None, "every delivery gets an outcome"
    return outcome


def _resolve(event: CheckedEvent, holder: dict[str, Any], fresh: bool) -> Outcome:
    """Stored (new or duplicate) when the run's holder is this event, else RUN_ID_CONFLICT."""
    if holder["hashes"]["event_sha256"] == event.event_sha256:
        return Stored(event.run_id, holder["revision"], duplicate=not fresh, run=holder)
    return RejectedError(
        DeadLetterCode.RUN_ID_CONFLICT,
        f"run {event.run_id} is held by another event "
        f"(event_sha256 {holder['hashes']['event_sha256']}, this one {event.event_sha256})",
    )
