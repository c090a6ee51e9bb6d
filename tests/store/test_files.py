"""The file store: create-if-absent, group commit, path safety, leftovers."""

from __future__ import annotations

import errno
import fcntl
import json
import multiprocessing
import os
import sqlite3
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.support import SmallDisk, temp_files
from worker.errors import StoreOutageError
from worker.store.base import NewRun
from worker.store.files import FileStore
from worker.store.revisions import encode
from worker.store.workspace import Workspace


def rid(n: int) -> str:
    return f"run_{n:032x}"


def art(run_id: str, tag: str = "a") -> dict[str, Any]:
    return {
        "run_id": run_id,
        "revision": 1,
        "source": "engine-a",
        "event_id": run_id,
        "recorded_at_utc": "2026-12-01T00:00:00.000000+00:00",
        "content_sha256": tag * 64,
        "hashes": {"event_sha256": tag * 64},
    }


@pytest.fixture(params=[True, False], ids=["syncfs", "fsync"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[FileStore]:
    files = FileStore(tmp_path / "data", use_syncfs=request.param)
    await files.open()
    yield files
    files.close()


class TestCreate:
    """Group-committed create-if-absent."""

    async def test_create_then_exists(self, store: FileStore) -> None:
        """The first create wins; the second reports the run as existing and changes nothing."""
        [first] = await store.create_runs([NewRun(rid(1), art(rid(1)))])
        assert first.created
        [second] = await store.create_runs([NewRun(rid(1), art(rid(1), "b"))])
        assert not second.created
        assert second.stored == art(rid(1))
        assert await store.get_run(rid(1)) == art(rid(1))

    async def test_batch(self, store: FileStore) -> None:
        """One call creates many runs, reporting each one."""
        await store.create_runs([NewRun(rid(5), art(rid(5)))])
        result = await store.create_runs([NewRun(rid(i), art(rid(i))) for i in range(10)])
        assert [r.created for r in result] == [i != 5 for i in range(10)]
        for i in range(10):
            assert (await store.get_run(rid(i))) is not None

    async def test_bytes_on_disk(self, store: FileStore) -> None:
        """The file holds exactly the encoded artifact, in the run's shard."""
        run_id = "run_ab" + "0" * 30
        await store.create_runs([NewRun(run_id, art(run_id))])
        path = store.runs_dir / "ab" / f"{run_id}.json"
        assert path.read_bytes() == encode(art(run_id))

    async def test_no_temp_files_left(self, store: FileStore) -> None:
        """A commit leaves no temp file behind."""
        await store.create_runs([NewRun(rid(i), art(rid(i))) for i in range(20)])
        leftovers = [p for p in (store.root / "tmp").rglob("*") if p.name.endswith(".tmp")]
        assert leftovers == []

    async def test_absent(self, store: FileStore) -> None:
        """A run that was never created reads as None."""
        assert await store.get_run(rid(99)) is None

    async def test_disk_error_is_an_outage(
        self, store: FileStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A full disk fails the whole batch as the store's outage, and nothing is created."""

        def full(fd: int, data: object) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "write", full)
        with pytest.raises(StoreOutageError, match="No space left on device"):
            await store.create_runs([NewRun(rid(1), art(rid(1)))])
        monkeypatch.undo()
        assert await store.get_run(rid(1)) is None


class TestPaths:
    """Nothing from outside picks a file path."""

    @pytest.mark.parametrize(
        "bad", ["../../etc/passwd", "run_" + "A" * 32, "run_" + "0" * 31, "run_/" + "0" * 31, ""]
    )
    def test_bad_run_ids(self, tmp_path: Path, bad: str) -> None:
        """A string that is not a run id never becomes a path."""
        with pytest.raises(ValueError, match="not a run id"):
            FileStore(tmp_path).run_path(bad)

    def test_bad_blob_ids(self, tmp_path: Path) -> None:
        """A string that is not a sha256 never becomes a blob path."""
        with pytest.raises(ValueError, match="not a sha256"):
            FileStore(tmp_path).blob_path("../" + "0" * 61)


def _hold_lock(path: str, ready: Any, release: Any) -> None:
    fd = os.open(path, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    ready.set()
    release.wait(10)


def _create_in_child(data_dir: str, run_id: str, tag: str, out: Any) -> None:
    import asyncio

    async def go() -> bool:
        files = FileStore(Path(data_dir))
        await files.open()
        try:
            [result] = await files.create_runs([NewRun(run_id, art(run_id, tag))])
            return result.created
        finally:
            files.close()

    out.put(asyncio.run(go()))


class TestAcrossProcesses:
    """Safety holds between processes sharing one data dir, not only between tasks."""

    def test_one_creator_wins(self, tmp_path: Path) -> None:
        """Four processes racing on one run id: exactly one creates it."""
        ctx = multiprocessing.get_context("spawn")
        out = ctx.Queue()
        procs = [
            ctx.Process(target=_create_in_child, args=(str(tmp_path), rid(7), t, out))
            for t in "abcd"
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        results = [out.get(timeout=5) for _ in procs]
        assert sorted(results) == [False, False, False, True]
        stored = json.loads((tmp_path / "runs" / "00" / f"{rid(7)}.json").read_bytes())
        assert stored["hashes"]["event_sha256"][0] in "abcd"

    async def test_sweep_spares_live_processes(self, tmp_path: Path) -> None:
        """Start-up removes temp dirs of dead processes and keeps those of live ones."""
        first = FileStore(tmp_path)
        await first.open()
        dead = tmp_path / "tmp" / "dead"
        dead.mkdir()
        (dead / ".lock").touch()
        (dead / "run_x.0.tmp").write_bytes(b"torn")
        live = tmp_path / "tmp" / "live"
        live.mkdir()
        (live / ".lock").touch()
        ctx = multiprocessing.get_context("spawn")
        ready, release = ctx.Event(), ctx.Event()
        holder = ctx.Process(target=_hold_lock, args=(str(live / ".lock"), ready, release))
        holder.start()
        try:
            assert ready.wait(30)
            second = FileStore(tmp_path)
            await second.open()
            assert not dead.exists()
            assert live.exists()
            temp_dirs = [p for p in (tmp_path / "tmp").iterdir() if p.is_dir()]
            assert len(temp_dirs) == 3  # live, first's, second's
            second.close()
        finally:
            release.set()
            holder.join(10)
            first.close()

    def test_starting_together(self, tmp_path: Path) -> None:
        """Workspaces opened at the same moment never sweep one another's fresh temp dir."""
        for round_ in range(20):
            root = tmp_path / str(round_)
            spaces = [Workspace(root) for _ in range(6)]
            with ThreadPoolExecutor(len(spaces)) as pool:
                list(pool.map(lambda space: space.open([]), spaces))
            try:
                for space in spaces:
                    with space.scratch() as scratch:
                        assert scratch.temp("x", b"x").exists()
            finally:
                for space in spaces:
                    space.close()


def _failing_writes(monkeypatch: pytest.MonkeyPatch, fail_at: int, code: int) -> None:
    """``os.write`` fails with ``code`` from its ``fail_at``-th call on."""
    real, calls = os.write, [0]

    def write(fd: int, data: Any) -> int:
        calls[0] += 1
        if calls[0] > fail_at:
            raise OSError(code, os.strerror(code))
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)


class TestFailedWrites:
    """A write that fails leaves nothing in the temp dir and nothing half-made (issue 13): a live
    worker may fail thousands of commits during a disk-full outage."""

    @pytest.mark.parametrize("fail_at", range(4))  # the intent, then each of three temp files
    async def test_commit_cleans_up(
        self, store: FileStore, monkeypatch: pytest.MonkeyPatch, fail_at: int
    ) -> None:
        runs = [NewRun(rid(i), art(rid(i))) for i in range(3)]
        _failing_writes(monkeypatch, fail_at, errno.ENOSPC)
        with pytest.raises(StoreOutageError, match="group commit failed: No space left"):
            await store.create_runs(runs)
        monkeypatch.undo()
        assert temp_files(store.root) == []
        assert [await store.get_run(r.run_id) for r in runs] == [None] * 3
        assert [c.created for c in await store.create_runs(runs)] == [True] * 3

    @pytest.mark.parametrize("flush", [1, 2])
    async def test_failed_flush(
        self, store: FileStore, monkeypatch: pytest.MonkeyPatch, flush: int
    ) -> None:
        """An I/O error at either flush is an outage; retried, the same batch ends stored and
        indexed (after the second flush failed, its runs are linked already: duplicates)."""
        real, calls = store.workspace.flush, [0]

        def flaky(*args: Any, **kwargs: Any) -> None:
            calls[0] += 1
            if calls[0] == flush:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            real(*args, **kwargs)

        monkeypatch.setattr(store.workspace, "flush", flaky)
        runs = [NewRun(rid(i), art(rid(i))) for i in range(3)]
        with pytest.raises(StoreOutageError, match="Input/output error"):
            await store.create_runs(runs)
        assert temp_files(store.root) == []
        retried = await store.create_runs(runs)
        assert [c.created for c in retried] == [flush == 1] * 3
        assert [c.stored["run_id"] for c in retried] == [r.run_id for r in runs]
        assert store.index.count() == 3

    async def test_index_failure_is_an_outage(
        self, store: FileStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def full(*args: Any) -> None:
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(store.index, "upsert", full)
        with pytest.raises(StoreOutageError, match="index: database or disk is full"):
            await store.create_runs([NewRun(rid(1), art(rid(1)))])
        assert temp_files(store.root) == []

    @pytest.mark.parametrize("fail_at", range(2))  # the metadata, then the bytes
    async def test_blob_cleans_up(
        self, store: FileStore, monkeypatch: pytest.MonkeyPatch, fail_at: int
    ) -> None:
        _failing_writes(monkeypatch, fail_at, errno.ENOSPC)
        with pytest.raises(StoreOutageError, match="blob write failed"):
            await store.put_blob(b"gcode", kind="gcode", mime="text/plain", filename="a.nc")
        monkeypatch.undo()
        assert temp_files(store.root) == []
        info = await store.put_blob(b"gcode", kind="gcode", mime="text/plain", filename="a.nc")
        assert await store.get_blob(info.sha256) == (b"gcode", info)


async def test_full_file_system(small_disk: SmallDisk) -> None:
    """On a real full file system: the commit fails as an outage and leaves no litter; given
    space, the same commit works."""
    store = FileStore(small_disk.path / "data")
    await store.open()
    try:
        runs = [NewRun(rid(i), art(rid(i), "f")) for i in range(50)]
        small_disk.fill()
        for _ in range(20):
            with pytest.raises(StoreOutageError, match="No space left on device"):
                await store.create_runs(runs)
        assert temp_files(store.root) == []
        small_disk.free()
        assert [c.created for c in await store.create_runs(runs)] == [True] * 50
        assert store.index.count() == 50
    finally:
        store.close()


class TestStoredRuns:
    """The audit's full scan: every run once, with its history."""

    async def test_every_run_with_its_history(self, store: FileStore) -> None:
        await store.create_runs([NewRun(rid(i), art(rid(i))) for i in range(40)])
        history = store.history_dir / rid(3)[4:6] / f"{rid(3)}.jsonl"
        history.parent.mkdir(parents=True, exist_ok=True)
        history.write_bytes(b'{"revision":2}\n\n{"revision":3}\n')
        seen = {run.run_id: run async for run in store.stored_runs()}
        assert sorted(seen) == sorted(rid(i) for i in range(40))
        assert seen[rid(3)].history == [b'{"revision":2}', b'{"revision":3}']
        assert json.loads(seen[rid(5)].artifact) == art(rid(5))

    async def test_an_early_stop(self, store: FileStore) -> None:
        """A caller may stop at any run: closing the scan raises nothing, even with a read ahead."""
        await store.create_runs([NewRun(rid(i), art(rid(i))) for i in range(40)])
        scan = store.stored_runs()
        async for _ in scan:
            break
        await scan.aclose()
        assert [run.run_id async for run in store.stored_runs()]  # and a new scan works
