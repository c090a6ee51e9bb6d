"""Reading on the loop when the caches hold a file, in a thread when not: the same bytes."""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from pathlib import Path

import pytest

from worker.store import cached_read
from worker.store.cached_read import read_cached, read_file


def _would_block(*args: object) -> int:
    raise OSError(errno.EAGAIN, "would block")


class TestReadCached:
    """The fast path answers from the caches or says it cannot (None), never half a file."""

    @pytest.mark.skipif(sys.platform != "linux", reason="openat2 and RWF_NOWAIT are Linux's")
    def test_available_on_linux(self) -> None:
        assert cached_read.FAST_PATH_AVAILABLE

    def test_a_file_just_written_is_read_whole(self, tmp_path: Path) -> None:
        path = tmp_path / "run.json"
        path.write_bytes(b'{"run": 1}' * 300)
        assert read_cached(str(path)) == path.read_bytes()

    def test_an_empty_file(self, tmp_path: Path) -> None:
        path = tmp_path / "empty"
        path.write_bytes(b"")
        assert read_cached(str(path)) == b""

    def test_a_missing_file_is_left_to_the_thread(self, tmp_path: Path) -> None:
        assert read_cached(str(tmp_path / "absent")) is None

    def test_a_large_file_is_left_to_the_thread(self, tmp_path: Path) -> None:
        path = tmp_path / "big"
        path.write_bytes(b"x" * 100)
        assert read_cached(str(path), most=100) is None
        assert read_cached(str(path), most=101) == b"x" * 100

    def test_a_read_that_would_block_is_left_to_the_thread(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        path = tmp_path / "cold"
        path.write_bytes(b"data")
        monkeypatch.setattr(os, "preadv", _would_block)
        assert read_cached(str(path)) is None

    def test_a_short_read_is_never_returned(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """RWF_NOWAIT reads what is cached: part of a file comes back as a short count."""
        path = tmp_path / "partly"
        path.write_bytes(b"0123456789")
        monkeypatch.setattr(os, "preadv", lambda fd, buffers, offset, flags: 4)
        assert read_cached(str(path)) is None

    def test_a_name_the_cache_cannot_resolve_is_left_to_the_thread(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        path = tmp_path / "uncached"
        path.write_bytes(b"data")
        monkeypatch.setattr(cached_read, "_open_cached", lambda path: None)
        assert read_cached(str(path)) is None

    def test_other_errors_raise(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        def refused(*args: object) -> int:
            ctypes.set_errno(errno.EACCES)
            return -1

        monkeypatch.setattr(cached_read, "_SYSCALL", refused)
        with pytest.raises(PermissionError):
            read_cached(str(tmp_path / "locked"))


class TestReadFile:
    """Whichever path reads it, a file's bytes, or the error ``open`` gives."""

    async def test_cached(self, tmp_path: Path) -> None:
        path = tmp_path / "run.json"
        path.write_bytes(b"{}")
        assert await read_file(str(path)) == b"{}"

    async def test_through_the_thread(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        path = tmp_path / "cold"
        path.write_bytes(b"cold bytes")
        monkeypatch.setattr(os, "preadv", _would_block)
        assert await read_file(str(path)) == b"cold bytes"

    async def test_larger_than_one_read(self, tmp_path: Path) -> None:
        path = tmp_path / "big"
        data = os.urandom(300_000)
        path.write_bytes(data)
        assert await read_file(str(path)) == data

    async def test_a_directory(self, tmp_path: Path) -> None:
        with pytest.raises(IsADirectoryError):
            await read_file(str(tmp_path))

    async def test_missing(self, tmp_path: Path) -> None:
        with pytest.raises(FileNotFoundError):
            await read_file(str(tmp_path / "absent"))
