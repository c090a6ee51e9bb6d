"""The file store: create-if-absent, group commit, path safety, leftovers."""

from __future__ import annotations

import errno
import fcntl
import json
import multiprocessing
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from worker.errors import TransientError
from worker.store.base import NewRun
from worker.store.files import FileStore
from worker.store.revisions import encode
from worker.store.workspace import Workspace


def rid(n: int) -> str:
    return f"run_{n:032x}"


def art(run_id: str, tag: str = "a") -> dict[str, Any]:
    return {"run_id": run_id, "revision": 1, "hashes": {"event_sha256": tag * 64}}


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

    async def test_disk_error_is_transient(
        self, store: FileStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A full disk fails the whole batch as transient, and nothing is created."""

        def full(fd: int, data: object) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "write", full)
        with pytest.raises(TransientError):
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
                assert all(space.write_temp("x", b"x").exists() for space in spaces)
            finally:
                for space in spaces:
                    space.close()
