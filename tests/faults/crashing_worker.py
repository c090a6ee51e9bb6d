"""``rmos-runs`` with a crash injected at one step of the first batch commit (env ``CRASH_AT``).

The step is reached through the real code path; only the primitive at that step is wrapped, so
the commit logic under test is the production one. The process dies with ``os._exit(137)``, as
abruptly as a SIGKILL: no flush, no ack, no clean-up.

    before_flush         temp files written, not yet flushed
    after_flush          flushed, nothing linked into place
    mid_link             some runs linked, the rest not
    before_leaves        all linked and indexed, the batch's leaves not yet in the Merkle log
    before_second_flush  all linked and logged, not yet flushed
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
from worker.store.merkle_log import MerkleLog

CRASHED = 137
LINKS_BEFORE_CRASH = 5


def _die() -> None:
    sys.stderr.write(f"crash injected at {os.environ['CRASH_AT']}\n")
    sys.stderr.flush()
    os._exit(CRASHED)


def install(step: str) -> None:
    _install_commit(step)
    _install_delivery(step)


def _install_commit(step: str) -> None:
    """The steps of the group commit: flushes, links of run files, the Merkle log."""
    flushes = 0
    links = 0
    real_flush, real_link, real_append = Flusher.flush, os.link, MerkleLog.append

    def flush(self: Flusher, *args: Any, **kwargs: Any) -> None:
        nonlocal flushes
        flushes += 1  # call 1 is the store's open(); 2 and 3 belong to the first commit
        if (step, flushes) in {("before_flush", 2), ("before_second_flush", 3)}:
            _die()
        real_flush(self, *args, **kwargs)

    def link(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        nonlocal links
        if f"{os.sep}runs{os.sep}" in os.fspath(dst):  # a run file (not a blob, not the key)
            links += 1
            if step == "after_flush" or (step == "mid_link" and links > LINKS_BEFORE_CRASH):
                _die()
        real_link(src, dst, *args, **kwargs)

    def append(self: MerkleLog, records: Any) -> list[int]:
        if step == "before_leaves" and records:
            _die()
        return real_append(self, records)

    Flusher.flush = flush  # type: ignore[method-assign]
    os.link = link
    MerkleLog.append = append  # type: ignore[method-assign]


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
