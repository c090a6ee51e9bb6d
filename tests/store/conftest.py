"""Fixtures of the store tier: a file store on a temp dir, opened and closed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from worker.store.files import FileStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[FileStore]:
    files = FileStore(tmp_path / "data")
    await files.open()
    yield files
    files.close()
