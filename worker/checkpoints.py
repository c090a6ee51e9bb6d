"""Signed checkpoints of the Merkle log, published on ``<root>.checkpoints`` (CONTRACT section 9).

While the log grows, each worker signs its head at most every ``RMOS_CHECKPOINT_INTERVAL_S``
and publishes it with JetStream, expecting the stream's last sequence: among any number of
workers on any hosts, the stream holds checkpoints of strictly growing size, each checked first
to extend the one before it (a worker whose log does not extend the last checkpoint refuses to
sign and says so: the log was rewritten or lost). Subscribers keep the stream's history as
witnesses; ``log.checkpoint`` answers the latest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

import nats.errors
import nats.js.errors
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.js import JetStreamContext
from pydantic import ValidationError

from contracts.canonical import canonical, parse_json
from contracts.subjects import Subjects
from contracts.transparency import Checkpoint, sign_checkpoint
from worker.core.timefmt import utc_now, utc_text
from worker.errors import StoreOutageError, TransientError
from worker.signing import load_or_create
from worker.store.merkle_log import MerkleLog

log = logging.getLogger(__name__)
EXPECTED_LAST_SEQ = "Nats-Expected-Last-Subject-Sequence"  # the one subject: survives a purge
WRONG_LAST_SEQUENCE = {10071, 10164}
NO_MESSAGE = 10037
ATTEMPTS = 16


class ForkedLogError(TransientError):
    """This worker's log does not extend the last published checkpoint."""


class Checkpoints:
    """Signs and publishes the heads of one log; reads the latest back."""

    def __init__(
        self,
        js_of: Callable[[], JetStreamContext],
        subjects: Subjects,
        merkle_log: MerkleLog,
        key_path: Path,
        *,
        interval_s: float,
        timeout: float = 5.0,
    ) -> None:
        self._js_of = js_of
        self._stream = subjects.checkpoints_stream
        self._subject = subjects.checkpoints
        self.origin = subjects.prefix
        self._log = merkle_log
        self.key_path = key_path
        self._key: Ed25519PrivateKey | None = None
        self.interval_s = interval_s
        self._timeout = timeout
        self._forked_at: int | None = None  # the checkpoint size last refused (logged once)
        self._signing = asyncio.Lock()
        self._next_at = 0.0  # the loop's clock: this process signs again no sooner

    def open(self) -> None:
        """Load the signing key (made first when it is the data dir's own and absent)."""
        self._key = load_or_create(self.key_path)

    async def covering(self, index: int) -> Checkpoint:
        """The latest checkpoint if it covers leaf ``index``; else the next one this process
        signs, no sooner than ``interval_s`` after its last."""
        for _ in range(ATTEMPTS):
            last = await self.latest()
            if last is not None and last[1].tree_size > index:
                return last[1]
            checkpoint = await self._issue_when_due()
            if checkpoint.tree_size > index:
                return checkpoint
        raise TransientError(f"no checkpoint covers leaf {index} yet")

    async def current(self) -> Checkpoint:
        """The latest checkpoint, or a newer one when the log grew beyond it and this process
        may sign again (``interval_s``)."""
        last = await self.latest()
        size = await asyncio.to_thread(self._log.size)
        if last is not None and (last[1].tree_size >= size or self._next_at > _now()):
            return last[1]
        return await self.issue()

    async def _issue_when_due(self) -> Checkpoint:
        async with self._signing:
            wait = self._next_at - _now()
            if wait > 0:
                await asyncio.sleep(wait)
            return await self.issue()

    async def latest(self) -> tuple[int, Checkpoint] | None:
        """(stream sequence, checkpoint) of the newest one, read from the stream leader."""
        try:
            msg = await self._js_of().get_msg(self._stream, subject=self._subject, direct=False)
        except nats.js.errors.NotFoundError as exc:
            if exc.err_code == NO_MESSAGE:
                return None
            raise StoreOutageError(f"{self._stream}: {exc.description}") from exc
        except (nats.errors.Error, TimeoutError) as exc:
            raise StoreOutageError(f"checkpoints unreadable: {exc!r}") from exc
        try:
            return msg.seq or 0, Checkpoint.model_validate(parse_json(msg.data or b""))
        except (ValueError, ValidationError) as exc:
            raise TransientError(f"checkpoint {msg.seq} is not a checkpoint: {exc}") from exc

    async def issue(self) -> Checkpoint:
        """The latest checkpoint once it covers this worker's log as it stands: signed now
        when it does not yet (the empty log's too)."""
        for _ in range(ATTEMPTS):
            size, root = await asyncio.to_thread(self._log.head)
            last = await self.latest()
            if last is not None:
                newest = last[1]
                if newest.tree_size >= size:
                    return newest
                await self._check_extends(newest)
            assert self._key is not None, "open() the checkpoints first"
            checkpoint = sign_checkpoint(
                self._key,
                origin=self.origin,
                tree_size=size,
                root=root,
                issued_at=utc_text(utc_now()),
            )
            headers = {EXPECTED_LAST_SEQ: str(last[0] if last else 0)}
            try:
                await self._js_of().publish(
                    self._subject,
                    canonical(checkpoint.as_dict()),
                    stream=self._stream,
                    headers=headers,
                    timeout=self._timeout,
                )
            except nats.js.errors.APIError as exc:
                if exc.err_code in WRONG_LAST_SEQUENCE:
                    continue  # another worker published first: look again
                raise TransientError(f"checkpoint refused: {exc.description}") from exc
            except (nats.errors.Error, TimeoutError) as exc:
                raise StoreOutageError(f"checkpoint unconfirmed: {exc!r}") from exc
            self._next_at = _now() + self.interval_s
            log.debug("checkpoint %d: %s", size, checkpoint.root_hash)
            return checkpoint
        raise TransientError("checkpoints kept moving")

    async def _check_extends(self, newest: Checkpoint) -> None:
        root = await asyncio.to_thread(self._log.root, newest.tree_size)
        if root == newest.root:
            self._forked_at = None
            return
        if self._forked_at != newest.tree_size:
            self._forked_at = newest.tree_size
            log.error(
                "the Merkle log does not extend checkpoint %d (root %s, this log's %s): it was "
                "rewritten or replaced; not signing (run `rmos-runs audit`)",
                newest.tree_size,
                newest.root_hash,
                root.hex(),
            )
        raise ForkedLogError(f"the log does not extend checkpoint {newest.tree_size}")

    async def run(self, stopping: asyncio.Event) -> None:
        """Every ``interval_s`` while the log grows, a checkpoint; until ``stopping``."""
        signed = -1
        while not stopping.is_set():
            try:
                if await asyncio.to_thread(self._log.size) != signed:
                    signed = (await self.issue()).tree_size
            except TransientError as exc:  # an outage, a forked log (logged where seen)
                log.debug("checkpoint postponed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.interval_s)


def _now() -> float:
    return time.monotonic()
