"""The file store: create-if-absent, group commit, path safety, leftovers."""

from __future__ import annotations

import errno
import fcntl
import json
import multiprocessing
import os
import sqlite3
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.support import SmallDisk, stored_artifacts, temp_files
from worker.errors import StoreOutageError
from worker.store.base import NewRun, StoredRun
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


async def _all(store: FileStore) -> list[StoredRun]:
    return [run async for run in store.stored_runs()]


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
        """A batch is one line a run in this process's segment, each the encoded artifact."""
        runs = [art(rid(i)) for i in range(3)]
        await store.create_runs([NewRun(a["run_id"], a) for a in runs])
        [segment] = (store.root / "segments").iterdir()
        assert segment.read_bytes() == b"".join(encode(a) + b"\n" for a in runs)
        assert stored_artifacts(store.root) == {a["run_id"]: encode(a) for a in runs}

    async def test_redelivery_writes_nothing(self, store: FileStore) -> None:
        """A batch of runs that exist already appends no bytes and reports what is stored."""
        await store.create_runs([NewRun(rid(1), art(rid(1)))])
        [segment] = (store.root / "segments").iterdir()
        size = segment.stat().st_size
        again = await store.create_runs([NewRun(rid(1), art(rid(1), "b"))])
        assert [(r.created, r.stored) for r in again] == [(False, art(rid(1)))]
        assert segment.stat().st_size == size

    async def test_new_segment_at_the_limit(self, store: FileStore) -> None:
        """Past its size limit a process starts a new segment; runs in both read back."""
        store.segments.limit = 1000
        runs = [art(rid(i)) for i in range(40)]
        for a in runs:
            await store.create_runs([NewRun(a["run_id"], a)])
        segments = sorted((store.root / "segments").iterdir())
        assert len(segments) > 3
        assert all(p.stat().st_size < 1000 + 400 for p in segments)
        assert [await store.get_run(a["run_id"]) for a in runs] == runs
        assert [r.run_id for r in await _all(store)] == [a["run_id"] for a in runs]

    async def test_segment_gone(self, store: FileStore) -> None:
        """A run whose segment was removed behind the store's back is damaged, not absent:
        ``verify`` fails it and a full pass reads it as no bytes."""
        await store.create_runs([NewRun(rid(1), art(rid(1)))])
        [segment] = (store.root / "segments").iterdir()
        segment.unlink()
        checks = await store.verify_run(rid(1))
        assert checks is not None
        assert not all(check.ok for check in checks)
        assert [(r.run_id, r.artifact) for r in await _all(store)] == [(rid(1), b"")]

    async def test_failed_commit_leaves_unread_bytes(
        self, store: FileStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Bytes appended by a commit that failed before its transaction name no run: the
        retry stores the run, and every read sees only what was committed."""

        def refuse(*_: object) -> None:
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(store.log, "create", refuse)
        with pytest.raises(StoreOutageError, match="disk I/O error"):
            await store.create_runs([NewRun(rid(1), art(rid(1), "b"))])
        monkeypatch.undo()
        assert await store.get_run(rid(1)) is None
        assert store.count_runs() == 0
        [result] = await store.create_runs([NewRun(rid(1), art(rid(1)))])
        assert result.created
        assert await store.get_run(rid(1)) == art(rid(1))
        assert [r.run_id for r in await _all(store)] == [rid(1)]

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
            FileStore(tmp_path).revisions.history_path(bad)

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
        stored = json.loads(stored_artifacts(tmp_path)[rid(7)])
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
    """``os.write`` and ``os.pwrite`` fail with ``code`` from their ``fail_at``-th call on."""
    calls = [0]

    def failing(real: Callable[..., int]) -> Callable[..., int]:
        def write(*args: Any) -> int:
            calls[0] += 1
            if calls[0] > fail_at:
                raise OSError(code, os.strerror(code))
            return real(*args)

        return write

    monkeypatch.setattr(os, "write", failing(os.write))
    monkeypatch.setattr(os, "pwrite", failing(os.pwrite))


class TestFailedWrites:
    """A write that fails leaves nothing in the temp dir and nothing half-made (issue 13): a live
    worker may fail thousands of commits during a disk-full outage."""

    @pytest.mark.parametrize("fail_at", range(2))  # the intent, then the segment
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
        indexed (after the second flush failed, its runs are placed already: duplicates)."""
        await store.create_runs([NewRun(rid(9), art(rid(9)))])  # the segment exists
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
        assert store.index.count() == 4

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


def _old_layout(data: Path, artifacts: list[dict[str, Any]]) -> None:
    """Run files as the layout before segments kept them (``runs/<xx>/<run_id>.json``)."""
    for a in artifacts:
        path = data / "runs" / a["run_id"][4:6] / f"{a['run_id']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode(a))


class TestOlderLayout:
    """A data dir of the one-file-a-run layout is moved into segments when it is opened."""

    async def test_moved_at_open(self, tmp_path: Path) -> None:
        """Every run file becomes a placed run, the files go, and the lost index is rebuilt."""
        data = tmp_path / "data"
        runs = [art(f"run_{n:02x}" + "0" * 30) for n in (0, 1, 0x1F, 0xFF)]
        _old_layout(data, runs)
        store = FileStore(data)
        await store.open()
        try:
            assert not (data / "runs").exists()
            assert [await store.get_run(a["run_id"]) for a in runs] == runs
            assert sorted(store.run_ids()) == sorted(a["run_id"] for a in runs)
            assert store.index.count() == 4
        finally:
            store.close()

    async def test_move_resumed(self, tmp_path: Path) -> None:
        """A start that finds run files beside placed runs (a move cut short) places the rest;
        a run placed already keeps its place."""
        data = tmp_path / "data"
        store = FileStore(data)
        await store.open()
        await store.create_runs([NewRun(rid(1), art(rid(1)))])
        store.close()
        _old_layout(data, [art(rid(1), "b"), art(rid(2))])
        again = FileStore(data)
        await again.open()
        try:
            assert await again.get_run(rid(1)) == art(rid(1))
            assert await again.get_run(rid(2)) == art(rid(2))
            assert not (data / "runs").exists()
        finally:
            again.close()


async def test_lost_places_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A data dir whose segments hold bytes but whose ``log.sqlite`` places nothing (the file
    lost or replaced) starts with an error saying so, not as a store that was always empty."""
    data = tmp_path / "data"
    store = FileStore(data)
    await store.open()
    await store.create_runs([NewRun(rid(1), art(rid(1)))])
    store.close()
    for name in ("log.sqlite", "log.sqlite-wal", "log.sqlite-shm"):
        (data / name).unlink(missing_ok=True)
    again = FileStore(data)
    await again.open()
    again.close()
    assert "log.sqlite places no run, yet segments/ holds" in caplog.text
