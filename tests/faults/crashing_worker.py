"""``rmos-runs`` with a crash injected at one step of the first batch commit (env ``CRASH_AT``).

The step is reached through the real code path; only the primitive at that step is wrapped, so
the commit logic under test is the production one. The process dies with ``os._exit(137)``, as
abruptly as a SIGKILL: no flush, no ack, no clean-up.

    before_flush         the batch appended to the segment, not yet flushed
    after_flush          flushed, nothing placed (the log.sqlite transaction not begun)
    before_index         placed and logged, not yet in the index
    before_second_flush  placed, logged and indexed, not yet flushed
    before_ack           all durable, nothing acknowledged
    before_request       a run stored PENDING, its explanation request not yet published
"""

from __future__ import annotations

import os
import sys
from typing import Any

from nats.aio.msg import Msg

from worker import cli
from worker.explanations import Explanations
from worker.store.durable import Flusher
from worker.store.index import RunIndex
from worker.store.run_log import RunLog
from worker.store.segments import Segments

CRASHED = 137


def _die() -> None:
    sys.stderr.write(f"crash injected at {os.environ['CRASH_AT']}\n")
    sys.stderr.flush()
    os._exit(CRASHED)


def install(step: str) -> None:
    _install_commit(step)
    _install_delivery(step)


def _install_commit(step: str) -> None:
    """The steps of the group commit: the segment's flush, the places, the index, the last flush."""
    appended = placed = False
    real_flush, real_append = Flusher.flush, Segments.append
    real_create, real_upsert = RunLog.create, RunIndex.upsert

    def flush(self: Flusher, *args: Any, **kwargs: Any) -> None:
        if (step, appended, placed) in {
            ("before_flush", True, False),
            ("before_second_flush", True, True),
        }:
            _die()
        real_flush(self, *args, **kwargs)

    def append(self: Segments, records: Any) -> Any:
        nonlocal appended
        appended = True
        return real_append(self, records)

    def create(self: RunLog, *args: Any) -> Any:
        nonlocal placed
        if step == "after_flush":
            _die()
        placed = True
        return real_create(self, *args)

    def upsert(self: RunIndex, artifacts: Any) -> None:
        if step == "before_index" and placed:
            _die()
        real_upsert(self, artifacts)

    Flusher.flush = flush  # type: ignore[method-assign]
    Segments.append = append  # type: ignore[method-assign]
    RunLog.create = create  # type: ignore[method-assign,assignment]
    RunIndex.upsert = upsert  # type: ignore[method-assign]


def _install_delivery(step: str) -> None:
    """The steps after the commit: the ack, the explanation request."""
    real_ack, real_request = Msg.ack, Explanations.publish_request

    async def ack(self: Msg) -> None:
        if step == "before_ack":
            _die()
        await real_ack(self)

    async def publish_request(self: Explanations, run: dict[str, Any]) -> None:
        if step == "before_request":
            _die()
        await real_request(self, run)

    Msg.ack = ack  # type: ignore[method-assign]
    Explanations.publish_request = publish_request  # type: ignore[method-assign]


if __name__ == "__main__":
    install(os.environ["CRASH_AT"])
    sys.exit(cli.main())
