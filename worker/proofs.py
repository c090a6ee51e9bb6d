"""What the API answers about the Merkle log: a run's checks and inclusion proof (``verify``),
the latest checkpoint, consistency proofs and ranges of leaves (CONTRACT section 9)."""

from __future__ import annotations

import asyncio
from typing import Any

from contracts.transparency import Checkpoint, hexes
from worker.checkpoints import Checkpoints
from worker.core.log_checks import run_checks
from worker.core.verify import Check
from worker.errors import UnavailableError
from worker.store.base import Leaf, RunStore

LOG_WAIT_S = 2.0  # how long a lagging copy of the log (jetstream store) may take to catch up
READ_ATTEMPTS = 3


class LogRequestError(ValueError):
    """A request the log cannot answer as asked (a size beyond the log, say)."""


class Proofs:
    """Answers from one store's log and one deployment's checkpoints."""

    def __init__(self, store: RunStore, checkpoints: Checkpoints) -> None:
        self._store = store
        self.checkpoints = checkpoints

    async def run_log(self, run_id: str) -> tuple[list[Check], dict[str, Any] | None]:
        """The log checks of a stored run, and the inclusion proof of its current revision in
        a signed checkpoint (None when the log has no leaf for it)."""
        artifact, entries = await self._read(run_id)
        leaves = await self._store.logged(run_id)
        if not isinstance(artifact, dict):
            expected = leaves[-1].record["artifact_sha256"] if leaves else "a leaf for the run"
            return [Check("log.artifact", False, expected, "not a JSON object")], None
        checks = run_checks(artifact, entries, [leaf.record for leaf in leaves])
        revision = artifact.get("revision")
        current = next((leaf for leaf in leaves if leaf.record["revision"] == revision), None)
        return checks, None if current is None else await self._inclusion(current)

    async def _read(self, run_id: str) -> tuple[Any, list[dict[str, Any]]]:
        """The artifact and the history of one revision (read again if a change came between)."""
        for _ in range(READ_ATTEMPTS):
            try:
                artifact = await self._store.get_run(run_id)
            except ValueError:  # not JSON: what verify's other checks say
                return None, []
            entries = await self._store.history(run_id) or []
            if (
                not isinstance(artifact, dict)
                or entries[-1:] == []
                or (entries[-1].get("revision") == artifact.get("revision"))
            ):
                return artifact, entries
        return artifact, entries

    async def _inclusion(self, leaf: Leaf) -> dict[str, Any]:
        checkpoint = await self.checkpoints.covering(leaf.index)
        await self._reach(checkpoint.tree_size)
        path = await asyncio.to_thread(self._store.log.inclusion, leaf.index, checkpoint.tree_size)
        return {
            "leaf_index": leaf.index,
            "leaf": leaf.record,
            "leaf_hash": leaf.hash.hex(),
            "tree_size": checkpoint.tree_size,
            "inclusion_proof": hexes(path),
            "checkpoint": checkpoint.as_dict(),
        }

    async def _reach(self, size: int) -> None:
        if not await self._store.log_reaches(size, LOG_WAIT_S):
            raise UnavailableError(f"this worker's copy of the log is behind {size} leaves")

    async def checkpoint(self) -> Checkpoint:
        """The latest checkpoint, signed anew when the log grew beyond it."""
        return await self.checkpoints.current()

    async def consistency(self, first: int, second: int | None) -> dict[str, Any]:
        if second is None:
            second = (await self.checkpoints.current()).tree_size
        if first > second:
            raise LogRequestError(f"first ({first}) is above second ({second})")
        await self._reach_or_refuse(second)
        log = self._store.log
        proof = await asyncio.to_thread(log.consistency, first, second)
        first_root = await asyncio.to_thread(log.root, first)
        second_root = await asyncio.to_thread(log.root, second)
        return {
            "first": first,
            "second": second,
            "first_root": first_root.hex(),
            "second_root": second_root.hex(),
            "proof": hexes(proof),
        }

    async def leaves(self, start: int, end: int | None, most: int) -> dict[str, Any]:
        if end is not None and not start < end <= start + most:
            raise LogRequestError(f"end must be above start and at most {most} beyond it")
        if end is None:
            end = min(start + 100, await asyncio.to_thread(self._store.log.size))
        else:
            await self._reach_or_refuse(end)
        rows = await asyncio.to_thread(self._store.log.leaves, start, end)
        items = [{"index": r.index, "leaf_hash": r.hash.hex(), "leaf": r.record} for r in rows]
        return {"start": start, "end": max(end, start), "leaves": items}

    async def _reach_or_refuse(self, size: int) -> None:
        """Wait for the copy of the log to hold ``size`` leaves; a size it does not reach is
        refused (the log is smaller)."""
        if not await self._store.log_reaches(size, LOG_WAIT_S):
            have = await asyncio.to_thread(self._store.log.size)
            raise LogRequestError(f"the log has {have} leaves, not {size}")
