"""The explanation lifecycle's adapter: transitions stored as revisions, then announced.

The rules are pure (``worker.core.lifecycle``); here a message becomes a compare-and-swap of the
run (``FileStore.update_run``), and every transition is published afterwards with JetStream:
the request on ``explain.requested`` (``Nats-Msg-Id: <request_id>``) when one is due, and the
status change on ``explain.status.<run_id>`` (``Nats-Msg-Id: <run_id>:r<revision>``). Both ids
are deterministic, so publishing again after a crash is stored once. A run stored ``PENDING``
whose request was never published (a crash in between) is found by the sweep, which also
re-requests, and finally fails, runs left ``PENDING`` past the timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from faststream.nats import NatsBroker
from pydantic import ValidationError

from contracts.models import ExplanationRequested, ExplanationStatusChanged
from worker import tracing
from worker.core import lifecycle
from worker.core.ingest import request_id_for
from worker.core.timefmt import utc_now
from worker.errors import StoreOutageError, UnavailableError
from worker.metrics import PATCHES_APPLIED, PATCHES_IGNORED, PATCHES_REPEATED, value
from worker.settings import Settings
from worker.store.base import Change, Query, RunStore

log = logging.getLogger(__name__)
SWEEP_MAX_INTERVAL_S = 30.0
UNAVAILABLE_RETRY_S = 1.0


class SweepError(RuntimeError):
    """Some runs of a sweep failed (each logged); the others were swept."""


class Explanations:
    """Applies lifecycle messages to runs and publishes what they cause."""

    def __init__(
        self,
        store: RunStore,
        broker: NatsBroker,
        settings: Settings,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._store = store
        self._broker = broker
        self._settings = settings
        self._subjects = settings.subjects
        self._clock = clock
        # Runs whose last sweep step failed, with the revision they were at after it (None:
        # unknown): a PENDING one is listed again, one that left PENDING is not (``_resent``).
        self._unpublished: dict[str, int | None] = {}

    async def _publish(self, subject: str, data: bytes, msg_id: str) -> None:
        await self._broker.publish(
            data,
            subject,
            headers=tracing.inject({"Nats-Msg-Id": msg_id, "content-type": "application/json"}),
            stream=self._subjects.explain_stream,
            timeout=self._settings.publish_timeout_s,
        )

    async def publish_request(self, run: dict[str, Any]) -> None:
        """The request of a ``PENDING`` run, as stored (so a retry publishes the same one).
        Checked against its contract model; the run travels as the stored dict, byte for byte
        the artifact ``get`` returns (a model's dump could add defaults or respell numbers)."""
        body = {
            "schema": "rmos.explanation_requested.v1",
            "request_id": run["explanation_request_id"],
            "run_id": run["run_id"],
            "revision": run["revision"],
            "requested_at": run["explanation_requested_at"],
            "run": run,
        }
        try:
            ExplanationRequested.model_validate(body)
        except ValidationError as exc:
            if any(error["loc"][:1] != ("run",) for error in exc.errors()):
                raise  # the envelope is ours: a bug, never sent undocumented
            # a run stored under an older schema still gets its request, as stored
            log.warning("run %s is not today's artifact schema: %s", run["run_id"], exc)
        data = json.dumps(body, ensure_ascii=False).encode()
        await self._publish(self._subjects.explain_requested, data, run["explanation_request_id"])

    async def publish_status(self, run: dict[str, Any], from_status: str) -> None:
        status = ExplanationStatusChanged.model_validate(
            {
                "schema": "rmos.explanation_status_changed.v1",
                "run_id": run["run_id"],
                "request_id": run.get("explanation_request_id"),
                "from": from_status,
                "to": run["explanation_status"],
                "revision": run["revision"],
                "at": run["updated_at_utc"],
                "summary": run.get("explanation_summary"),
                "error": run.get("explanation_error"),
            }
        )
        body = status.model_dump(mode="json", by_alias=True)
        for absent in ("summary", "error"):  # present only when the run has them
            if body[absent] is None:
                del body[absent]
        data = json.dumps(body, ensure_ascii=False).encode()
        msg_id = f"{run['run_id']}:r{run['revision']}"
        await self._publish(self._subjects.explain_status(run["run_id"]), data, msg_id)

    async def announce_created(self, run: dict[str, Any]) -> None:
        """After a run is durable (or met again as a duplicate): its request, if it has one due."""
        if run["explanation_status"] != "PENDING":
            return
        await self.publish_request(run)
        if run["revision"] == 1:  # the creation's NONE → PENDING
            await self.publish_status(run, "NONE")

    async def transition(
        self,
        run_id: str,
        message: Callable[[dict[str, Any]], lifecycle.Message],
        by: str,
    ) -> tuple[dict[str, Any], lifecycle.Verdict] | None:
        """Decide and store one message (compare-and-swap), then announce a transition.

        ``message`` builds the message from the current artifact (a new request id depends on
        its revision). Returns the artifact now and the decision; None when the run is absent.
        """
        decided: list[lifecycle.Verdict] = []
        messages: list[lifecycle.Message] = []
        now = self._clock()

        def change(current: dict[str, Any]) -> Change | None:
            messages.append(message(current))
            decision = lifecycle.decide(current, messages[-1])
            decided.append(decision)
            if decision.kind != "transition":
                return None
            new = lifecycle.apply(current, decision, now, bump_revision=False)
            keys = {*decision.changes, *decision.removed, "advisory_inputs"}
            return Change({k: new.get(k) for k in keys}, change="explanation", by=by)

        result = await self._store.update_run(run_id, change)
        if result is None:
            return None
        run, changed = result
        decision = decided[-1]
        patch = isinstance(messages[-1], lifecycle.Patch)
        if patch and decision.kind != "ignored":
            (PATCHES_APPLIED if changed else PATCHES_REPEATED).inc()
        if changed:
            if decision.publish_request:
                await self.publish_request(run)
            await self.publish_status(run, decision.from_status)
        elif decision.kind == "unchanged" and patch:
            # A redelivered patch: the status of its transition may never have gone out (stored,
            # then a failed publish). Its message id makes a second copy stored once.
            await self.publish_status(run, "PENDING")
        elif decision.kind == "ignored":
            PATCHES_IGNORED.inc()
            log.info(
                "ignored (%s); rmos_explain_patches_ignored_total=%d",
                decision.reason,
                value(PATCHES_IGNORED),
            )
        return run, decision

    def request(self, force: bool) -> Callable[[dict[str, Any]], lifecycle.Message]:
        """A request message with the id of the revision it would create."""
        return lambda run: lifecycle.Request(
            force, request_id_for(run["run_id"], run["revision"] + 1), self._clock()
        )

    def tick(self) -> Callable[[dict[str, Any]], lifecycle.Message]:
        return lambda run: lifecycle.Tick(
            self._clock(),
            self._settings.explain_timeout_s,
            self._settings.explain_max_attempts,
            request_id_for(run["run_id"], run["revision"] + 1),
        )

    async def sweep(self, *, republish: bool) -> int:
        """Every ``PENDING`` run: past its deadline, re-requested or failed; else, with
        ``republish`` (at start-up), its stored request published again. A run whose step
        failed (a publish refused after its change was stored) does not hold up the rest: its
        stored request and status go out again at the next sweep, and so does the status of a
        step that took the run out of PENDING (a timeout's ERROR). Returns runs seen."""
        listed, failed = await self._sweep_pending(republish)
        unsent = await self._resend_lost(listed)
        if failed or unsent:
            raise SweepError(
                f"{failed} of {len(listed)} PENDING runs not swept"
                + (f", {unsent} statuses not sent" if unsent else "")
            )
        return len(listed)

    async def _sweep_pending(self, republish: bool) -> tuple[set[str], int]:
        """The runs listed as PENDING, each swept; and how many of them failed."""
        listed: set[str] = set()
        failed = 0
        after: tuple[str, str] | None = None
        while True:
            rows = await self._store.list_runs(
                Query(equals=(("explanation_status", "PENDING"),), after=after, limit=500)
            )
            for row in rows[:500]:
                run_id = row["run_id"]
                listed.add(run_id)
                try:
                    await self._swept(run_id, republish)
                except (StoreOutageError, UnavailableError):
                    raise
                except Exception as exc:
                    failed += 1
                    self._unpublished[run_id] = await self._revision(run_id)
                    log.warning("explanation sweep: %s not done, next sweep: %r", run_id, exc)
                else:
                    self._unpublished.pop(run_id, None)
            if len(rows) <= 500:
                return listed, failed
            after = (rows[499]["created_at_utc"], rows[499]["run_id"])

    async def _resend_lost(self, listed: set[str]) -> int:
        """The statuses owed by failed steps of runs no longer listed; how many still are."""
        unsent = 0
        for run_id in set(self._unpublished) - listed:
            try:
                if await self._resent(run_id, self._unpublished[run_id]):
                    del self._unpublished[run_id]
            except (StoreOutageError, UnavailableError):
                raise
            except Exception as exc:
                unsent += 1
                log.warning("explanation sweep: status of %s not sent, next sweep: %r", run_id, exc)
        return unsent

    async def _swept(self, run_id: str, republish: bool) -> None:
        lost = run_id in self._unpublished  # its last step failed: maybe after it was stored
        result = await self.transition(run_id, self.tick(), by="deadline")
        if result is None or result[1].kind != "unchanged" or not (republish or lost):
            return
        run = result[0]
        await self.announce_created(run)  # the stored request (and a creation's status)
        if lost and run["explanation_status"] == "PENDING" and run["revision"] > 1:
            await self.publish_status(run, "PENDING")  # its re-request's: the same message id

    async def _revision(self, run_id: str) -> int | None:
        """The run's revision now, after a failed step; None when that cannot be read."""
        try:
            run = await self._store.get_run(run_id)
        except Exception:  # the step's own failure is what gets reported
            return None
        return None if run is None else run.get("revision")

    async def _resent(self, run_id: str, revision: int | None) -> bool:
        """A run whose failed step took it out of PENDING: that step's status, unless the run
        has changed since (its change published its own). The same message id as the lost
        one, so a copy that did reach the stream is stored once. False while the run is still
        PENDING (an index behind it did not list it): a later listing finishes its step."""
        run = await self._store.get_run(run_id)
        if run is None:
            return True
        if run["explanation_status"] == "PENDING":
            return False
        if run["explanation_status"] in ("READY", "ERROR") and revision in (None, run["revision"]):
            await self.publish_status(run, "PENDING")
        return True

    async def run_sweeps(self, stopping: asyncio.Event) -> None:
        """Sweep at start-up (republishing), then periodically until ``stopping`` is set."""
        interval = min(self._settings.explain_timeout_s / 4, SWEEP_MAX_INTERVAL_S)
        republish = True
        while not stopping.is_set():
            wait = interval
            try:
                await self.sweep(republish=republish)
                republish = False
            except UnavailableError as exc:  # the list index is being built: soon
                log.info("explanation sweep postponed: %s", exc)
                wait = min(interval, UNAVAILABLE_RETRY_S)
            except StoreOutageError as exc:  # logged as an outage by the consumers
                log.info("explanation sweep postponed: store down: %s", exc)
            except SweepError as exc:  # each logged; those runs are retried at the next sweep
                log.warning("explanation sweep: %s; trying them again later", exc)
                republish = False
            except Exception:
                log.exception("explanation sweep failed; trying again later")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), wait)
