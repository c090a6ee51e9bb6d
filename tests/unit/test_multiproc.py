"""A group's metrics directory: made fresh and locked, stale ones swept, files allocated."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT
from worker import multiproc


@pytest.fixture(autouse=True)
def _restore(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(multiproc.ENV, raising=False)
    monkeypatch.setattr(multiproc, "_owned", None)


def held(lock: Path) -> bool:
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class TestGroupDir:
    def test_fresh_locked_and_swept(self, tmp_path: Path) -> None:
        root = tmp_path / "metrics"
        stale = root / "stale"
        stale.mkdir(parents=True)
        (stale / "counter_1.db").write_bytes(b"x")
        (stale / multiproc.LOCK).touch()
        half_made = root / "half"  # no lock file yet: nobody holds it
        half_made.mkdir()
        path = multiproc._new_group_dir(root)
        assert path.parent == root
        assert not stale.exists()
        assert not half_made.exists()
        assert held(path / multiproc.LOCK)
        assert multiproc.sweep(root) == []  # ours is live
        multiproc.finish()
        assert not path.exists()

    def test_a_live_group_is_left_alone(self, tmp_path: Path) -> None:
        root = tmp_path / "metrics"
        other = root / "other"
        other.mkdir(parents=True)
        fd = os.open(other / multiproc.LOCK, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            assert multiproc.sweep(root) == []
            assert other.exists()
        finally:
            os.close(fd)
        assert multiproc.sweep(root) == [other]

    def test_no_space_is_one_clear_error(self, tmp_path: Path) -> None:
        with pytest.raises(multiproc.MetricsDirError, match="cannot allocate"):
            multiproc.allocate(tmp_path / "missing", 1)


class TestReadyMarks:
    def test_ready_then_dead(self, tmp_path: Path) -> None:
        assert not multiproc.is_ready(tmp_path, 77)
        multiproc.mark_ready(tmp_path, 77)
        assert multiproc.is_ready(tmp_path, 77)
        (tmp_path / "gauge_livemax_77.db").write_bytes(b"")
        (tmp_path / "counter_77.db").write_bytes(b"")
        multiproc.process_dead(tmp_path, 77)
        assert not multiproc.is_ready(tmp_path, 77)
        assert not (tmp_path / "gauge_livemax_77.db").exists()
        assert (tmp_path / "counter_77.db").exists()


PREPARE = """
import os, sys
from pathlib import Path
from worker import multiproc
from worker.settings import Settings
path = multiproc.prepare(Settings())
import prometheus_client.values as values
print(path, os.environ.get(multiproc.ENV), values.ValueClass is not values.MutexValue)
"""


def prepare(tmp_path: Path, **env: str) -> list[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("RMOS_", "PROMETHEUS"))}
    environ.update(RMOS_DATA_DIR=str(tmp_path / "data"), **env)
    done = subprocess.run(
        [sys.executable, "-c", PREPARE],
        env=environ, cwd=ROOT, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return done.stdout.split()


class TestPrepare:
    """In a fresh interpreter, as the CLI runs it before importing the worker."""

    def test_first_of_a_group(self, tmp_path: Path) -> None:
        path, env, multiprocess = prepare(tmp_path, RMOS_METRICS_PORT="9", RMOS_PROCESSES="2")
        assert Path(path).parent == tmp_path / "data" / multiproc.METRICS_DIR
        assert (env, multiprocess) == (path, "True")

    def test_a_sibling_keeps_the_group_it_was_given(self, tmp_path: Path) -> None:
        group = tmp_path / "group"
        group.mkdir()
        path, env, multiprocess = prepare(tmp_path, PROMETHEUS_MULTIPROC_DIR=str(group))
        assert (path, env, multiprocess) == (str(group), str(group), "True")
        assert len(list(group.glob("*.db"))) == len(multiproc.FILES)

    def test_one_process_has_its_own_registry(self, tmp_path: Path) -> None:
        stray = tmp_path / "stray"
        stray.mkdir()
        out = prepare(tmp_path, RMOS_METRICS_PORT="9", PROMETHEUS_MULTIPROC_DIR=str(stray))
        assert out == ["None", "None", "False"]

    def test_a_group_refused_after_prometheus_client(self, tmp_path: Path) -> None:
        import prometheus_client  # noqa: F401 (imported: too late to choose its mode)

        from worker.settings import Settings

        group = Settings(data_dir=tmp_path, metrics_port=9, processes=2)
        with pytest.raises(RuntimeError, match="before"):
            multiproc.prepare(group)
        assert not (tmp_path / multiproc.METRICS_DIR).exists()
        assert multiproc.prepare(Settings(data_dir=tmp_path, metrics_port=9)) is None
        assert multiproc.prepare(Settings(data_dir=tmp_path)) is None

    def test_the_cli_imports_it_late(self) -> None:
        code = (
            "import sys, worker.cli, worker.connection; print('prometheus_client' in sys.modules)"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
        )
        assert done.stdout.strip() == "False"
