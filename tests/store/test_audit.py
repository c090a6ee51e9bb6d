"""``rmos-runs audit``'s passes over a real files store: the leaf pass in this process or in a
forked one gives the same result, and a forked pass's failure reaches the caller."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import delete_stored, rewrite_stored, stored_artifacts
from worker.audit import _run as audit_pass
from worker.core.ingest import content_sha256
from worker.core.log_checks import Audit, LeafPass
from worker.store.base import Change, NewRun
from worker.store.files import FileStore

RUNS = 30


def rid(n: int) -> str:
    return f"run_{n:032x}"


def artifact(n: int) -> dict[str, Any]:
    core = {
        "run_id": rid(n),
        "revision": 1,
        "status": "BLOCKED",
        "source": "engine-a",
        "event_id": f"evt-{n}",
        "recorded_at_utc": "2026-12-01T00:00:00.000000+00:00",
    }
    return core | {"content_sha256": content_sha256(core)}


@pytest.fixture
async def tampered(tmp_path: Path) -> AsyncIterator[FileStore]:
    """30 runs, every third at revision 2 (not run 7: it has one leaf); then run 4's artifact
    rewritten and run 7's deleted."""
    data = tmp_path / "data"
    store = FileStore(data)
    await store.open()
    await store.create_runs([NewRun(rid(n), artifact(n)) for n in range(RUNS)])
    for n in range(0, RUNS, 3):

        def decide(_: dict[str, Any]) -> Change:
            return Change({"meta": {"k": "v"}}, "meta", "test")

        await store.update_run(rid(n), decide)
    store.close()
    forged = json.loads(stored_artifacts(data)[rid(4)]) | {"status": "OK"}
    rewrite_stored(data, rid(4), json.dumps(forged, sort_keys=True, separators=(",", ":")).encode())
    delete_stored(data, rid(7))
    audited = FileStore(data)
    audited.log.open()
    yield audited
    audited.log.close()


def summary(result: Audit) -> tuple[Any, ...]:
    findings = [(f.kind, f.run_id) for f in result.findings]
    return result.runs, result.revisions, result.leaves, result.root, findings


async def test_forked_and_in_process_agree(tampered: FileStore) -> None:
    """Both ways find the rewrite and the deletion, with the same counts and root."""
    in_process = await audit_pass(tampered, None, [], fork_at=10**9)
    forked = await audit_pass(tampered, None, [], fork_at=0)
    assert summary(forked) == summary(in_process)
    runs, revisions, leaves, _, findings = summary(forked)
    assert (runs, revisions, leaves) == (RUNS - 1, RUNS + RUNS // 3 - 1, RUNS + RUNS // 3)
    assert findings == [("run.rewritten", rid(4)), ("run.deleted", rid(7))]
    tampered.log.root(leaves)  # the parent's log connections work again after the fork


async def test_forked_failure_is_raised(
    tampered: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error in the forked pass is raised here; a child that dies says its exit code."""

    def broken(self: LeafPass, index: int, data: bytes) -> None:
        raise ValueError(f"leaf {index} unreadable")

    monkeypatch.setattr(LeafPass, "leaf", broken)  # the fork inherits it
    with pytest.raises(ValueError, match="leaf 0 unreadable"):
        await audit_pass(tampered, None, [], fork_at=0)

    def dies(self: LeafPass, index: int, data: bytes) -> None:
        os._exit(3)

    monkeypatch.setattr(LeafPass, "leaf", dies)
    with pytest.raises(RuntimeError, match="exit code 3"):
        await audit_pass(tampered, None, [], fork_at=0)
