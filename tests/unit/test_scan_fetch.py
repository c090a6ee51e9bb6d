"""A one-off scan of a stream (an audit's, of the runs bucket or the checkpoints) rides out a
fetch that fails for a moment, and ``audit`` turns a store that stays down into one line and
exit 3."""

from __future__ import annotations

import argparse
from typing import Any, cast

import nats.errors
import nats.js.errors
import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from worker import audit, cli, streams
from worker.errors import StoreOutageError
from worker.output import Exit
from worker.settings import Settings


class FlakySubscription:
    """A pull subscription whose first ``failures`` fetches raise ``error``."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures, self.error, self.fetches = failures, error, 0

    async def fetch(self, batch: int, timeout: float) -> list[Msg]:
        self.fetches += 1
        if self.fetches <= self.failures:
            raise self.error
        return [cast(Msg, f"msg{i}") for i in range(batch)]


async def fetch(sub: FlakySubscription, batch: int = 3) -> list[Msg]:
    return await streams.scan_fetch(
        cast(JetStreamContext.PullSubscription, sub), batch, 5.0, "KV_RMOS_RUNS"
    )


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streams, "SCAN_RETRY_S", 0.0)


@pytest.mark.parametrize(
    "error",
    [nats.js.errors.ServiceUnavailableError(), nats.errors.TimeoutError(), TimeoutError()],
    ids=["503", "nats-timeout", "timeout"],
)
async def test_a_passing_failure_is_retried(error: Exception) -> None:
    sub = FlakySubscription(streams.SCAN_RETRIES, error)
    assert len(await fetch(sub)) == 3
    assert sub.fetches == streams.SCAN_RETRIES + 1


async def test_a_lasting_failure_is_an_outage() -> None:
    sub = FlakySubscription(streams.SCAN_RETRIES + 1, nats.js.errors.ServiceUnavailableError())
    with pytest.raises(StoreOutageError, match=r"scan of KV_RMOS_RUNS failed 6 times"):
        await fetch(sub)
    assert sub.fetches == streams.SCAN_RETRIES + 1


def test_audit_of_a_failing_store_is_one_line_and_exit_3(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def failing(args: argparse.Namespace, settings: Settings, url: str | None) -> Any:
        raise StoreOutageError("the scan of KV_RMOS_RUNS failed 6 times: ServiceUnavailableError")

    monkeypatch.setattr(audit, "run", failing)
    code = cli.main(["audit", "--nats-url", "nats://127.0.0.1:4222", "--store", "jetstream"])
    assert code == Exit.API_ERROR
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "rmos-runs audit: the store could not be read, nothing was concluded: "
        "the scan of KV_RMOS_RUNS failed 6 times: ServiceUnavailableError"
    ]
