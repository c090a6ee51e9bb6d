"""Start-up adoption of runs older than the Merkle log (``Worker._adopt_unlogged``), with a fake
store: a passing failure is retried and adoption goes on; a lasting one gives up, said once."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from worker import app
from worker.app import Worker
from worker.errors import StoreOutageError


class FakeStore:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def log_size(self) -> int:
        return 0

    async def adopt_unlogged(self) -> int:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise StoreOutageError("RMOS_LOG: no leader yet")
        return 2


class NoCheckpoints:
    async def latest(self) -> None:
        return None


def worker(store: FakeStore) -> Any:
    fake = SimpleNamespace(store=store, checkpoints=NoCheckpoints())
    fake._adoption_wanted = lambda: Worker._adoption_wanted(fake)  # type: ignore[arg-type]
    return fake


@pytest.fixture(autouse=True)
def _no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_sleep(_: float) -> None:
        return None

    monkeypatch.setattr(asyncio, "sleep", no_sleep)


async def test_a_passing_failure_is_retried(caplog: pytest.LogCaptureFixture) -> None:
    store = FakeStore(failures=2)
    with caplog.at_level(logging.WARNING, "worker.app"):
        await Worker._adopt_unlogged(worker(store))
    assert store.calls == 3
    assert "2 runs stored before it are logged" in caplog.text
    assert "not looked for" not in caplog.text


async def test_a_lasting_failure_gives_up(caplog: pytest.LogCaptureFixture) -> None:
    store = FakeStore(failures=100)
    with caplog.at_level(logging.WARNING, "worker.app"):
        await Worker._adopt_unlogged(worker(store))
    assert store.calls == app.ADOPT_ATTEMPTS
    assert caplog.text.count("not looked for (RMOS_LOG: no leader yet); next start") == 1
