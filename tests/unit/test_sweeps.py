"""The explanation sweep and transitions (``worker.explanations``) with an in-memory store, a
fake broker and an injected clock: deadlines, re-requests, the timeout ERROR, the start-up
republish, and what is published (checked against the contract's models)."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta
from typing import Any, Literal, cast

import pytest

from contracts.models import ExplanationRequested, ExplanationStatusChanged
from tests.unit.fakes import T0, FakeBroker, Published, as_broker
from worker.core import lifecycle
from worker.core.ingest import build_artifact, check_event, request_id_for
from worker.core.timefmt import utc_text
from worker.explanations import Explanations, SweepError
from worker.metrics import PATCHES_APPLIED, PATCHES_IGNORED, PATCHES_REPEATED, value
from worker.settings import Settings
from worker.store.base import Decide, Query, RunStore
from worker.store.revisions import propose
from worker.testing import event

SETTINGS = Settings(explain_timeout_s=300, explain_max_attempts=3, publish_timeout_s=2)
REQUESTED = "rmos.runs.v1.explain.requested"
STATUS = "rmos.runs.v1.explain.status."


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def at(self, seconds: float) -> None:
        """Set the time to ``seconds`` after T0."""
        self.now = T0 + timedelta(seconds=seconds)


class FakeStore:
    """The part of ``RunStore`` the explanations use, in memory. ``update_run`` is the port's
    compare-and-swap, applying a ``Change`` as every store does (``revisions.propose``).
    ``listed_status`` overrides what the index says of a run (an index behind the runs)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.runs: dict[str, dict[str, Any]] = {}
        self.history: dict[str, list[dict[str, Any]]] = {}
        self.listed_status: dict[str, str] = {}
        self.queries: list[Query] = []
        self.updates: list[tuple[str, bool]] = []  # (run id, changed)

    def put(self, artifact: dict[str, Any]) -> dict[str, Any]:
        self.runs[artifact["run_id"]] = copy.deepcopy(artifact)
        self.history[artifact["run_id"]] = []
        return artifact

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        run = self.runs.get(run_id)
        return copy.deepcopy(run) if run is not None else None

    async def list_runs(self, query: Query) -> list[dict[str, Any]]:
        self.queries.append(query)
        rows = []
        for run in self.runs.values():
            row = {
                "run_id": run["run_id"],
                "created_at_utc": run["created_at_utc"],
                "explanation_status": self.listed_status.get(
                    run["run_id"], run["explanation_status"]
                ),
                "revision": run["revision"],
            }
            if all(row.get(column) == wanted for column, wanted in query.equals):
                rows.append(row)
        rows.sort(key=lambda r: (r["created_at_utc"], r["run_id"]), reverse=True)
        if query.after is not None:
            after = query.after
            rows = [r for r in rows if (r["created_at_utc"], r["run_id"]) < after]
        return rows[: query.limit + 1]

    async def update_run(
        self, run_id: str, decide: Decide, *, expected_revision: int | None = None
    ) -> tuple[dict[str, Any], bool] | None:
        current = await self.get_run(run_id)
        if current is None:
            return None
        proposed = propose(run_id, current, decide, expected_revision, self.clock())
        if proposed is None:
            self.updates.append((run_id, False))
            return current, False
        new, entry = proposed
        self.runs[run_id] = copy.deepcopy(new)
        self.history[run_id].append(entry)
        self.updates.append((run_id, True))
        return copy.deepcopy(new), True


class Rig:
    def __init__(self, settings: Settings = SETTINGS) -> None:
        self.clock = Clock()
        self.store = FakeStore(self.clock)
        self.broker = FakeBroker()
        self.explanations = Explanations(
            cast(RunStore, self.store), as_broker(self.broker), settings, clock=self.clock
        )

    async def sweep(self, republish: bool = False) -> int:
        return await self.explanations.sweep(republish=republish)

    def published(self) -> list[tuple[str, str]]:
        """(subject, Nats-Msg-Id) of every publish so far."""
        return [(p.subject, p.headers["Nats-Msg-Id"]) for p in self.broker.published]

    def run(self, run_id: str) -> dict[str, Any]:
        return self.store.runs[run_id]

    async def re_request_lost(self) -> str:
        """A run re-requested at its deadline (revision 2) whose publishes all failed; the
        broker works again, nothing remembered of it. Returns the run id."""
        run_id: str = self.store.put(artifact())["run_id"]
        self.broker.refuse = lambda subject: True
        self.clock.at(301)
        with pytest.raises(SweepError):
            await self.sweep()
        self.broker.refuse = lambda subject: False
        self.broker.forget()
        return run_id

    async def patched(self, run_id: str, status: Literal["READY", "ERROR"]) -> None:
        """The run answered (READY or ERROR) for its current request; nothing published."""
        request_id = self.run(run_id)["explanation_request_id"]
        summary, error = ("fine", None) if status == "READY" else (None, "model crashed")
        patch = lifecycle.Patch(request_id, status, summary, error, None, "explainer-1")
        await self.explanations.transition(run_id, lambda run: patch, by="explainer-1")
        self.broker.forget()


def artifact(n: int = 1, *, explain: bool | None = None, at: datetime = T0) -> dict[str, Any]:
    """A run stored at ``at``: BLOCKED/RED, so PENDING at revision 1 (unless ``explain``)."""
    body = event(f"e-{n}", status="BLOCKED", decision={"risk_level": "RED", "score": 10})
    if explain is not None:
        body["explain"] = explain
    checked = check_event(json.dumps(body).encode(), subject_source=None, max_bytes=1 << 20)
    return build_artifact(checked, parent=None, stored_at=at, now=at)


def requested(publish: Published) -> dict[str, Any]:
    body: dict[str, Any] = publish.body()
    ExplanationRequested.model_validate(body)
    return body


def status_changed(publish: Published) -> dict[str, Any]:
    body: dict[str, Any] = publish.body()
    ExplanationStatusChanged.model_validate(body)
    return body


def check_publish(publish: Published) -> None:
    assert publish.stream == "RMOS_EXPLAIN"
    assert publish.timeout == 2
    assert publish.headers["content-type"] == "application/json"


class TestDeadline:
    async def test_before_the_deadline_nothing_happens(self) -> None:
        """ "Longer than the timeout" is strict: at the deadline itself the run waits."""
        rig = Rig()
        run = rig.store.put(artifact())
        rig.clock.at(300)
        assert await rig.sweep() == 1
        assert rig.store.updates == [(run["run_id"], False)]
        assert rig.run(run["run_id"]) == run
        assert rig.broker.attempts == []

    async def test_overdue_is_re_requested(self) -> None:
        rig = Rig()
        run = rig.store.put(artifact())
        run_id = run["run_id"]
        rig.clock.at(300.000001)
        assert await rig.sweep() == 1
        now = rig.run(run_id)
        new_id = request_id_for(run_id, 2)
        assert new_id != run["explanation_request_id"]
        assert {k: v for k, v in now.items() if now.get(k) != run.get(k)} == {
            "revision": 2,
            "updated_at_utc": utc_text(rig.clock.now),
            "explanation_request_id": new_id,
            "explanation_requested_at": utc_text(rig.clock.now),
            "explanation_attempts": 2,
        }
        assert now["explanation_status"] == "PENDING"
        assert [(e["change"], e["by"], e["revision"]) for e in rig.store.history[run_id]] == [
            ("explanation", "deadline", 2)
        ]
        assert rig.published() == [(REQUESTED, new_id), (STATUS + run_id, f"{run_id}:r2")]
        request, status = rig.broker.published
        for publish in rig.broker.published:
            check_publish(publish)
        assert requested(request) == {
            "schema": "rmos.explanation_requested.v1",
            "request_id": new_id,
            "run_id": run_id,
            "revision": 2,
            "requested_at": utc_text(rig.clock.now),
            "run": now,
        }
        assert status_changed(status) == {
            "schema": "rmos.explanation_status_changed.v1",
            "run_id": run_id,
            "request_id": new_id,
            "from": "PENDING",
            "to": "PENDING",
            "revision": 2,
            "at": utc_text(rig.clock.now),
        }

    async def test_attempts_run_out(self) -> None:
        """Attempt 1 (creation), 2 and 3 each time out; then ERROR "timed out", which the sweep
        leaves alone from then on."""
        rig = Rig()
        run_id = rig.store.put(artifact())["run_id"]
        for attempt, at in ((2, 301), (3, 602)):
            rig.clock.at(at)
            await rig.sweep()
            assert rig.run(run_id)["explanation_attempts"] == attempt
            assert rig.run(run_id)["explanation_request_id"] == request_id_for(run_id, attempt)
        assert rig.run(run_id)["explanation_status"] == "PENDING"
        rig.broker.forget()
        rig.clock.at(903)
        assert await rig.sweep() == 1
        final = rig.run(run_id)
        assert final["revision"] == 4
        assert final["explanation_status"] == "ERROR"
        assert final["explanation_error"] == lifecycle.TIMED_OUT == "timed out"
        assert final["explanation_request_id"] == request_id_for(run_id, 3)  # the one timed out
        assert final["explanation_attempts"] == 3
        assert rig.published() == [(STATUS + run_id, f"{run_id}:r4")]  # no new request
        assert status_changed(rig.broker.published[0]) == {
            "schema": "rmos.explanation_status_changed.v1",
            "run_id": run_id,
            "request_id": request_id_for(run_id, 3),
            "from": "PENDING",
            "to": "ERROR",
            "revision": 4,
            "at": utc_text(rig.clock.now),
            "error": "timed out",
        }
        rig.broker.forget()
        rig.clock.at(10_000)
        assert await rig.sweep(republish=True) == 0
        assert rig.broker.attempts == []
        assert rig.run(run_id) == final

    async def test_max_attempts_one(self) -> None:
        rig = Rig(Settings(explain_timeout_s=10, explain_max_attempts=1))
        run_id = rig.store.put(artifact())["run_id"]
        rig.clock.at(11)
        await rig.sweep()
        assert rig.run(run_id)["explanation_status"] == "ERROR"
        assert [s for s, _ in rig.published()] == [STATUS + run_id]

    async def test_a_missing_requested_at_is_overdue(self) -> None:
        """A PENDING run without a readable request time never stays PENDING forever."""
        rig = Rig()
        broken = {**artifact(), "explanation_requested_at": "soon"}
        run_id = rig.store.put(broken)["run_id"]
        await rig.sweep()  # at T0 itself
        assert rig.run(run_id)["explanation_request_id"] == request_id_for(run_id, 2)


class TestRepublish:
    """At start-up the stored request of every PENDING run not yet overdue goes out again, as
    stored (same request id, same message id: stored once by JetStream)."""

    async def test_a_new_run(self) -> None:
        rig = Rig()
        run = rig.store.put(artifact())
        run_id, request_id = run["run_id"], run["explanation_request_id"]
        rig.clock.at(100)
        assert await rig.sweep(republish=True) == 1
        assert rig.run(run_id) == run  # nothing stored
        assert rig.published() == [(REQUESTED, request_id), (STATUS + run_id, f"{run_id}:r1")]
        request, status = rig.broker.published
        assert requested(request) == {
            "schema": "rmos.explanation_requested.v1",
            "request_id": request_id,
            "run_id": run_id,
            "revision": 1,
            "requested_at": utc_text(T0),
            "run": run,
        }
        assert status_changed(status)["from"] == "NONE"  # the creation's NONE → PENDING
        assert status_changed(status)["at"] == utc_text(T0)

    async def test_a_re_requested_run(self) -> None:
        """Past revision 1 only the request goes out: its status change is already sent."""
        rig = Rig()
        run_id = rig.store.put(artifact())["run_id"]
        rig.clock.at(301)
        await rig.sweep()
        rig.broker.forget()
        rig.clock.at(400)
        await rig.sweep(republish=True)
        assert rig.published() == [(REQUESTED, request_id_for(run_id, 2))]
        assert requested(rig.broker.published[0])["run"] == rig.run(run_id)

    async def test_only_at_start_up(self) -> None:
        rig = Rig()
        rig.store.put(artifact())
        rig.clock.at(100)
        await rig.sweep(republish=False)
        assert rig.broker.attempts == []

    async def test_overdue_is_re_requested_not_republished(self) -> None:
        rig = Rig()
        run_id = rig.store.put(artifact())["run_id"]
        rig.clock.at(301)
        await rig.sweep(republish=True)
        assert rig.published() == [
            (REQUESTED, request_id_for(run_id, 2)),
            (STATUS + run_id, f"{run_id}:r2"),
        ]

    async def test_a_lost_request_goes_out_at_the_next_sweep(self) -> None:
        """The re-request is stored, its publish fails: the sweep says so (the other runs are
        swept), and the next sweep publishes the stored request and status, not overdue."""
        rig = Rig()
        run_id = rig.store.put(artifact())["run_id"]
        other = rig.store.put(artifact(2))["run_id"]
        rig.broker.refuse = lambda subject: subject.endswith(run_id) or subject == REQUESTED
        rig.clock.at(301)
        with pytest.raises(SweepError, match="2 of 2 PENDING runs not swept"):
            await rig.sweep()
        assert rig.run(run_id)["revision"] == 2
        assert rig.run(other)["revision"] == 2  # not held up by the first
        rig.broker.refuse = lambda subject: False
        rig.clock.at(302)
        await rig.sweep()
        assert sorted(rig.published()) == sorted(
            [
                (REQUESTED, request_id_for(run_id, 2)),
                (STATUS + run_id, f"{run_id}:r2"),
                (REQUESTED, request_id_for(other, 2)),
                (STATUS + other, f"{other}:r2"),
            ]
        )
        rig.broker.published.clear()
        await rig.sweep()
        assert rig.broker.published == []  # once out, not again

    async def test_a_lost_timeout_error_goes_out_at_the_next_sweep(self) -> None:
        """The last attempt times out: ERROR is stored, its status publish fails. The run is
        no longer PENDING, so no listing finds it again; the next sweep still publishes its
        status (the same message id), once."""
        rig = Rig(Settings(explain_timeout_s=10, explain_max_attempts=1, publish_timeout_s=2))
        run_id = rig.store.put(artifact())["run_id"]
        rig.broker.refuse = lambda subject: subject.endswith(run_id)
        rig.clock.at(11)
        with pytest.raises(SweepError, match="1 of 1 PENDING runs not swept"):
            await rig.sweep()
        assert rig.run(run_id)["explanation_status"] == "ERROR"
        assert rig.broker.published == []
        rig.broker.refuse = lambda subject: False
        rig.clock.at(12)
        assert await rig.sweep() == 0  # no PENDING run
        assert rig.published() == [(STATUS + run_id, f"{run_id}:r2")]
        body = status_changed(rig.broker.published[0])
        assert (body["from"], body["to"], body["error"]) == ("PENDING", "ERROR", "timed out")
        rig.broker.forget()
        await rig.sweep()
        assert rig.broker.attempts == []  # once out, not again

    async def test_a_lost_status_of_a_run_answered_since_is_not_sent(self) -> None:
        """A step failed, then the run moved on (an explainer answered): its new status went
        out with that change, and the failed step's own is stale: nothing more is sent."""
        rig = Rig()
        run_id = await rig.re_request_lost()
        await rig.patched(run_id, "READY")  # revision 3; forgets the attempts so far
        await rig.sweep()
        assert rig.broker.attempts == []

    async def test_a_lost_request_not_listed_once_is_still_sent(self) -> None:
        """An index behind the run leaves it out of one sweep: still PENDING, it is kept for
        the listing that finds it, which publishes the lost request and status."""
        rig = Rig()
        run_id = await rig.re_request_lost()
        rig.store.listed_status[run_id] = "NONE"
        await rig.sweep()
        assert rig.broker.attempts == []
        del rig.store.listed_status[run_id]
        await rig.sweep()
        assert sorted(rig.published()) == [
            (REQUESTED, request_id_for(run_id, 2)),
            (STATUS + run_id, f"{run_id}:r2"),
        ]


class TestUntouched:
    async def test_runs_not_pending(self) -> None:
        """NONE, READY and ERROR runs, listed as PENDING by an index behind the runs: neither
        changed nor announced, however late."""
        rig = Rig()
        rig.store.put(artifact(1, explain=False))
        ready = rig.store.put(artifact(2))
        error = rig.store.put(artifact(3))
        await rig.patched(ready["run_id"], "READY")
        await rig.patched(error["run_id"], "ERROR")
        stored = copy.deepcopy(rig.store.runs)
        assert [r["explanation_status"] for r in stored.values()] == ["NONE", "READY", "ERROR"]
        rig.clock.at(10**6)
        assert await rig.sweep(republish=True) == 0  # the index knows they are not PENDING
        for run_id in stored:
            rig.store.listed_status[run_id] = "PENDING"
        assert await rig.sweep(republish=True) == 3
        assert rig.store.runs == stored
        assert rig.broker.attempts == []
        assert {changed for _, changed in rig.store.updates[-3:]} == {False}

    async def test_a_listed_run_that_is_gone(self) -> None:
        rig = Rig()
        run_id = rig.store.put(artifact())["run_id"]
        rig.clock.at(301)
        real_list = rig.store.list_runs

        async def list_then_lose(query: Query) -> list[dict[str, Any]]:
            rows = await real_list(query)
            rig.store.runs.clear()
            return rows

        rig.store.list_runs = list_then_lose  # type: ignore[method-assign]
        assert await rig.sweep(republish=True) == 1
        assert rig.broker.attempts == []
        assert run_id not in rig.store.runs

    async def test_only_pending_runs_are_asked_for(self) -> None:
        rig = Rig()
        await rig.sweep()
        assert rig.store.queries == [
            Query(equals=(("explanation_status", "PENDING"),), after=None, limit=500)
        ]


async def test_pages_of_500() -> None:
    """501 overdue runs: two pages, the second after the first's last row; each re-requested
    once."""
    rig = Rig()
    for n in range(501):
        rig.store.put(artifact(n, at=T0 - timedelta(seconds=n % 7)))
    rig.clock.at(301)
    assert await rig.sweep() == 501
    first, second = rig.store.queries
    assert first.after is None
    rows = sorted(
        ((r["created_at_utc"], r["run_id"]) for r in rig.store.runs.values()), reverse=True
    )
    assert second.after == rows[499]
    assert sorted(run_id for run_id, _ in rig.store.updates) == sorted(rig.store.runs)
    assert all(changed for _, changed in rig.store.updates)
    assert {r["revision"] for r in rig.store.runs.values()} == {2}
    assert len(rig.broker.published) == 2 * 501


class TestTransition:
    """One message at a time: stored by compare-and-swap, then announced."""

    async def test_request_on_none(self) -> None:
        rig = Rig()
        run_id = rig.store.put(artifact(explain=False))["run_id"]
        rig.clock.at(5)
        result = await rig.explanations.transition(
            run_id, rig.explanations.request(force=False), by="api"
        )
        assert result is not None
        run, decision = result
        assert (decision.kind, decision.from_status, decision.to_status) == (
            "transition",
            "NONE",
            "PENDING",
        )
        assert run == rig.run(run_id)
        assert (run["revision"], run["explanation_request_id"]) == (2, request_id_for(run_id, 2))
        assert rig.store.history[run_id][-1]["by"] == "api"
        assert rig.published() == [
            (REQUESTED, request_id_for(run_id, 2)),
            (STATUS + run_id, f"{run_id}:r2"),
        ]
        assert status_changed(rig.broker.published[1])["from"] == "NONE"

    async def test_request_on_pending_unforced(self) -> None:
        rig = Rig()
        run = rig.store.put(artifact())
        result = await rig.explanations.transition(
            run["run_id"], rig.explanations.request(force=False), by="api"
        )
        assert result is not None
        assert result[1].kind == "unchanged"
        assert result[0] == run
        assert rig.broker.attempts == []

    async def test_patch_ready(self) -> None:
        rig = Rig()
        run_id = rig.store.put(artifact())["run_id"]
        applied = value(PATCHES_APPLIED)
        patch = lifecycle.Patch(request_id_for(run_id, 1), "READY", "ok", None, None, "x-1")
        rig.clock.at(7)
        await rig.explanations.transition(run_id, lambda run: patch, by="explainer x-1")
        assert rig.run(run_id)["explanation_summary"] == "ok"
        assert rig.published() == [(STATUS + run_id, f"{run_id}:r2")]
        assert status_changed(rig.broker.published[0]) == {
            "schema": "rmos.explanation_status_changed.v1",
            "run_id": run_id,
            "request_id": request_id_for(run_id, 1),
            "from": "PENDING",
            "to": "READY",
            "revision": 2,
            "at": utc_text(rig.clock.now),
            "summary": "ok",
        }
        assert value(PATCHES_APPLIED) == applied + 1

        # Redelivered: nothing stored, its status sent again under the same message id.
        repeated = value(PATCHES_REPEATED)
        first = rig.broker.published[0]
        rig.broker.forget()
        await rig.explanations.transition(run_id, lambda run: patch, by="explainer x-1")
        assert rig.run(run_id)["revision"] == 2
        assert rig.broker.published == [first]
        assert value(PATCHES_REPEATED) == repeated + 1

    async def test_stale_patch_is_ignored(self) -> None:
        rig = Rig()
        run = rig.store.put(artifact())
        ignored = value(PATCHES_IGNORED)
        patch = lifecycle.Patch("req_other_1", "READY", "ok", None, None, "x-1")
        result = await rig.explanations.transition(run["run_id"], lambda r: patch, by="x-1")
        assert result is not None
        assert result[1].kind == "ignored"
        assert rig.run(run["run_id"]) == run
        assert rig.broker.attempts == []
        assert value(PATCHES_IGNORED) == ignored + 1

    async def test_absent_run(self) -> None:
        rig = Rig()
        assert await rig.explanations.transition(
            "run_" + "a" * 32, rig.explanations.tick(), "x"
        ) is (None)
        assert rig.broker.attempts == []
