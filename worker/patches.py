"""The patches consumer: explainers' answers applied to runs, one message at a time.

A patch is applied only to a ``PENDING`` run with that ``request_id``; the same patch twice is
a no-op, a patch for another request is ignored and counted. A patch that is malformed, names
an unknown run, or whose body ``run_id`` differs from its subject's is dead-lettered
``INVALID_PATCH``. Failures are settled like events' (``worker.delivery``); while the store is
down as a whole, the patch is held and applied once it works (``worker.outage``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import ValidationError

from contracts.canonical import CanonicalError, parse_json
from contracts.codes import DeadLetterCode
from contracts.models import ExplanationPatch
from contracts.subjects import PATCHES_CONSUMER
from worker import tracing
from worker.core import lifecycle
from worker.core.ingest import describe_errors
from worker.delivery import Action, DeadLetters, FetchFailures, settle_failure
from worker.errors import RejectedError
from worker.explanations import Explanations
from worker.logs import fields
from worker.outage import Outage
from worker.settings import Settings

log = logging.getLogger(__name__)
FETCH = 64


def parse_patch(subject: str, data: bytes) -> lifecycle.Patch:
    """A patch the state machine may decide on, or RejectedError(INVALID_PATCH, why)."""
    try:
        patch = ExplanationPatch.model_validate(parse_json(data))
    except CanonicalError as exc:
        raise RejectedError(DeadLetterCode.INVALID_PATCH, f"not JSON: {exc}") from None
    except ValidationError as exc:
        raise RejectedError(DeadLetterCode.INVALID_PATCH, describe_errors(exc)) from None
    if subject.rpartition(".")[2] != patch.run_id:
        raise RejectedError(
            DeadLetterCode.INVALID_PATCH, f"run_id {patch.run_id} is not the subject's {subject}"
        )
    message = lifecycle.Patch(
        request_id=patch.request_id,
        status=patch.status,
        summary=patch.summary,
        error=patch.error,
        advisory=patch.advisory.model_dump(exclude_none=True) if patch.advisory else None,
        explainer_id=patch.explainer_id,
    )
    problem = lifecycle.validate_patch(message)
    if problem is not None:
        raise RejectedError(DeadLetterCode.INVALID_PATCH, problem)
    return message


class PatchConsumer:
    """Runs the pull loop of the durable consumer on ``explain.patch.>`` until :meth:`stop`."""

    def __init__(
        self,
        js: JetStreamContext,
        explanations: Explanations,
        dead_letters: DeadLetters,
        settings: Settings,
        outage: Outage,
    ) -> None:
        self._js = js
        self._explanations = explanations
        self._dead_letters = dead_letters
        self._settings = settings
        self._outage = outage
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        sub = await self._js.pull_subscribe_bind(
            durable=PATCHES_CONSUMER, stream=self._settings.subjects.explain_stream
        )
        fetch_failures = FetchFailures("patches")
        try:
            while not self._stopping.is_set():
                await self._outage.passable(self._stopping)  # fetch nothing while it is down
                msgs = await fetch_failures.fetch(sub, FETCH)
                self._outage.hold(msgs)
                try:
                    for msg in msgs:
                        await self.handle(msg)
                finally:
                    self._outage.release(msgs)
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def handle(self, msg: Msg) -> None:
        """Apply one patch and settle its message, in the patch's trace. Never raises."""
        run_id = msg.subject.rpartition(".")[2]
        with tracing.continued(msg.headers, "rmos.patch", attributes={"rmos.run_id": run_id}):
            await self._settled(msg)

    async def _settled(self, msg: Msg) -> None:
        try:
            await self._outage.persist(lambda: self._apply(msg), self._stopping)
            await msg.ack()
            return
        except Exception as exc:
            failure = exc
        seq, run_id = msg.metadata.sequence.stream, msg.subject.rpartition(".")[2]
        action = await settle_failure(msg, failure, self._dead_letters)
        where = fields(stream_seq=seq, run_id=run_id)
        if action is Action.DEAD_LETTER:
            assert isinstance(failure, RejectedError)
            log.info(
                "dead-lettered patch at seq %s: %s",
                seq,
                failure,
                extra={**where, **fields(code=failure.code)},
            )
        elif action is Action.RETRY:
            log.warning("patch at seq %s not applied: %r", seq, failure, extra=where)

    async def _apply(self, msg: Msg) -> None:
        patch = parse_patch(msg.subject, msg.data)
        run_id = msg.subject.rpartition(".")[2]
        by = f"patch {patch.request_id} from {patch.explainer_id}"
        result = await self._explanations.transition(run_id, lambda _: patch, by=by)
        if result is None:
            raise RejectedError(DeadLetterCode.INVALID_PATCH, f"no run {run_id}")
