"""Revisions: compare-and-swap, the history's crash window, the immutable core."""

from __future__ import annotations

import errno
import json
import os
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.support import temp_files
from worker.core.ingest import build_artifact, check_event
from worker.errors import RevisionConflictError, StoreOutageError
from worker.store.base import Change, NewRun
from worker.store.files import FileStore

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


async def a_run(store: FileStore) -> dict[str, Any]:
    body = {
        "schema": "rmos.run_event.v1",
        "event_id": "e1",
        "source": "engine-a",
        "mode": "m",
        "tool_id": "t",
        "event_type": "x",
        "status": "OK",
        "feasibility": {"d": 1},
        "decision": {"risk_level": "GREEN"},
    }
    checked = check_event(json.dumps(body).encode(), subject_source="engine-a", max_bytes=4096)
    artifact = build_artifact(checked, parent=None, stored_at=NOW, now=NOW)
    await store.create_runs([NewRun(checked.run_id, artifact)])
    return artifact


def set_meta(**meta: Any) -> Change:
    return Change({"meta": meta}, change="meta", by="test")


class TestUpdate:
    """Each accepted change is one revision; stale or core-reaching changes are refused."""

    async def test_revision_and_history(self, store: FileStore) -> None:
        """A change bumps the revision and is recorded with its changed paths."""
        run = await a_run(store)
        result = await store.update_run(run["run_id"], lambda _: set_meta(a=1))
        assert result is not None
        updated, changed = result
        assert (updated["revision"], changed) == (2, True)
        assert updated["content_sha256"] == run["content_sha256"]
        history = await store.history(run["run_id"])
        assert history is not None
        assert [(h["revision"], h["change"], h["changed"]) for h in history] == [
            (1, "created", []),
            (2, "meta", ["meta.a"]),
        ]

    async def test_no_change_no_revision(self, store: FileStore) -> None:
        """A decision of None leaves the run as it is."""
        run = await a_run(store)
        assert await store.update_run(run["run_id"], lambda _: None) == (run, False)

    async def test_stale_expectation(self, store: FileStore) -> None:
        """An expected revision that is not the current one is a conflict."""
        run = await a_run(store)
        with pytest.raises(RevisionConflictError):
            await store.update_run(run["run_id"], lambda _: set_meta(a=1), expected_revision=2)

    async def test_core_untouchable(self, store: FileStore) -> None:
        """A change that would alter the immutable core is refused, and nothing is written."""
        run = await a_run(store)
        with pytest.raises(ValueError, match="immutable core"):
            await store.update_run(
                run["run_id"], lambda _: Change({"status": "ERROR"}, "meta", "t")
            )
        assert await store.get_run(run["run_id"]) == run

    async def test_absent(self, store: FileStore) -> None:
        """Updating a run that does not exist says so."""
        assert await store.update_run("run_" + "0" * 32, lambda _: set_meta(a=1)) is None


class TestCrashWindow:
    """A history line written by a change that never reached the artifact is not history."""

    async def test_orphan_line_ignored_then_replaced(self, store: FileStore) -> None:
        """Only entries up to the artifact's revision count, the last written for each."""
        run = await a_run(store)
        path = store.history_dir / run["run_id"][4:6] / f"{run['run_id']}.jsonl"
        orphan = {"revision": 2, "at": "x", "change": "meta", "by": "crashed", "changed": []}
        path.write_text(json.dumps(orphan) + "\n")
        history = await store.history(run["run_id"])
        assert history is not None
        assert [h["revision"] for h in history] == [1]
        await store.update_run(run["run_id"], lambda _: set_meta(a=1, b=2))
        history = await store.history(run["run_id"])
        assert history is not None
        assert [(h["revision"], h["by"]) for h in history] == [
            (1, "event engine-a:e1"),
            (2, "test"),
        ]


class TestFailedChanges:
    """A change that fails (a full disk) leaves the history and the temp dir as they were."""

    @pytest.mark.parametrize("fail_at", range(3))  # the history line, the intent, the temp file
    async def test_no_litter_no_torn_line(
        self, store: FileStore, monkeypatch: pytest.MonkeyPatch, fail_at: int
    ) -> None:
        run = await a_run(store)
        await store.update_run(run["run_id"], lambda _: set_meta(a=1))
        history_file = store.revisions.history_path(run["run_id"])
        before = history_file.read_bytes()
        real, calls = os.write, [0]

        def write(fd: int, data: Any) -> int:
            calls[0] += 1
            if calls[0] > fail_at:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            if calls[0] == 1:  # a short write first, as a filling disk does
                return real(fd, bytes(data)[:7])
            return real(fd, data)

        monkeypatch.setattr(os, "write", write)
        with pytest.raises(StoreOutageError, match="No space left on device"):
            await store.update_run(run["run_id"], lambda _: set_meta(a=1, b=2))
        monkeypatch.undo()
        assert temp_files(store.root) == []
        if fail_at == 0:
            assert history_file.read_bytes() == before  # the partial line was cut off again
        assert (await store.get_run(run["run_id"]) or {})["revision"] == 2
        await store.update_run(run["run_id"], lambda _: set_meta(a=1, b=2))
        history = await store.history(run["run_id"]) or []
        assert [(h["revision"], h["changed"]) for h in history] == [
            (1, []),
            (2, ["meta.a"]),
            (3, ["meta.b"]),
        ]

    async def test_torn_line_is_ended(self, store: FileStore) -> None:
        """A line torn by a crash is skipped and does not swallow the next change's line."""
        run = await a_run(store)
        history_file = store.revisions.history_path(run["run_id"])
        history_file.write_bytes(b'{"revision": 2, "at": "20')
        await store.update_run(run["run_id"], lambda _: set_meta(a=1))
        history = await store.history(run["run_id"]) or []
        assert [(h["revision"], h["changed"]) for h in history] == [(1, []), (2, ["meta.a"])]
