"""The explanation state machine of CONTRACT section 4: every (state, message) pair, and apply."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from worker.core.lifecycle import (
    Message,
    Patch,
    Request,
    Tick,
    Verdict,
    apply,
    decide,
    validate_patch,
    wants_explanation,
)
from worker.core.timefmt import utc_text

T0 = datetime(2026, 11, 24, 10, 0, 0, 123456, tzinfo=UTC)
NOW = T0 + timedelta(seconds=301)
ADVISORY = {"advisory_id": "adv-1", "kind": "explanation", "created_at_utc": utc_text(T0)}


def artifact(state: str) -> dict[str, Any]:
    """A run in ``state``; PENDING, READY and ERROR concern request ``req-1``, its first attempt."""
    art: dict[str, Any] = {
        "run_id": "run_467d95e1bee1f48fc5dfa0a6a422cd7d",
        "status": "BLOCKED",
        "decision": {"risk_level": "RED"},
        "revision": 2,
        "updated_at_utc": utc_text(T0),
        "explanation_status": state,
        "explanation_attempts": 0,
        "advisory_inputs": [],
    }
    if state != "NONE":
        art.update(
            explanation_request_id="req-1",
            explanation_requested_at=utc_text(T0),
            explanation_attempts=1,
        )
    if state == "READY":
        art["explanation_summary"] = "fine"
    if state == "ERROR":
        art["explanation_error"] = "boom"
    return art


def patch(
    request_id: str = "req-1",
    status: Any = "READY",
    summary: str | None = "new summary",
    error: str | None = None,
    advisory: dict[str, Any] | None = None,
) -> Patch:
    return Patch(request_id, status, summary, error, advisory, "explainer-1")


def duplicate_of_outcome(state: str) -> Patch:
    """A redelivery of the patch that gave the run its current (or, when PENDING, last) outcome."""
    if state == "ERROR":
        return patch(status="ERROR", summary=None, error="boom")
    return patch(request_id="req-0" if state == "PENDING" else "req-1", summary="fine")


def message(name: str, state: str) -> Message:
    messages: dict[str, Message] = {
        "request": Request(force=False, request_id="req-2", now=NOW),
        "request force": Request(force=True, request_id="req-2", now=NOW),
        "patch READY matching": patch(),
        "patch ERROR matching": patch(status="ERROR", summary=None, error="new error"),
        "patch stale id": patch(request_id="req-0"),
        "patch duplicate": duplicate_of_outcome(state),
        "tick before deadline": Tick(T0 + timedelta(seconds=100), 300, 3, "req-2"),
        "tick past, attempts left": Tick(NOW, 300, 3, "req-2"),
        "tick past, last attempt": Tick(NOW, 300, 1, "req-2"),
    }
    return messages[name]


STAY_ON_OUTCOME = {
    "request": "unchanged",
    "request force": "PENDING",
    "patch READY matching": "ignored",
    "patch ERROR matching": "ignored",
    "patch stale id": "ignored",
    "patch duplicate": "unchanged",
    "tick before deadline": "unchanged",
    "tick past, attempts left": "unchanged",
    "tick past, last attempt": "unchanged",
}
# state → message → the decision's kind ("unchanged", "ignored"), or the status of a transition.
EXPECTED: dict[str, dict[str, str]] = {
    "NONE": {
        "request": "PENDING",
        "request force": "PENDING",
        "patch READY matching": "ignored",
        "patch ERROR matching": "ignored",
        "patch stale id": "ignored",
        "patch duplicate": "ignored",
        "tick before deadline": "unchanged",
        "tick past, attempts left": "unchanged",
        "tick past, last attempt": "unchanged",
    },
    "PENDING": {
        "request": "unchanged",
        "request force": "PENDING",
        "patch READY matching": "READY",
        "patch ERROR matching": "ERROR",
        "patch stale id": "ignored",
        "patch duplicate": "ignored",
        "tick before deadline": "unchanged",
        "tick past, attempts left": "PENDING",
        "tick past, last attempt": "ERROR",
    },
    "READY": STAY_ON_OUTCOME,
    "ERROR": STAY_ON_OUTCOME,
}
PAIRS = [(state, name, want) for state, row in EXPECTED.items() for name, want in row.items()]


class TestTransitionTable:
    """Every (state, message) pair gives the kind and the target status of CONTRACT section 4."""

    def test_table_is_complete(self) -> None:
        """4 states × 9 messages, no pair left out."""
        assert len(PAIRS) == 36
        assert all(set(row) == set(STAY_ON_OUTCOME) for row in EXPECTED.values())

    @pytest.mark.parametrize(("state", "name", "want"), PAIRS)
    def test_pair(self, state: str, name: str, want: str) -> None:
        """A transition reaches ``want``; anything else leaves the status where it was."""
        decision = decide(artifact(state), message(name, state))
        assert decision.from_status == state
        if want in ("unchanged", "ignored"):
            assert (decision.kind, decision.to_status) == (want, state)
            assert (decision.changes, decision.removed, decision.publish_request) == ({}, (), False)
        else:
            assert (decision.kind, decision.to_status) == ("transition", want)
            assert decision.changes["explanation_status"] == want
            assert decision.publish_request == (want == "PENDING")
            assert decision.reason


class TestDecisions:
    """The exact changes of each kind of transition."""

    def test_creation_request(self) -> None:
        """NONE → PENDING: the new request id, its time and the first attempt."""
        decision = decide(artifact("NONE"), Request(force=False, request_id="req-2", now=NOW))
        assert decision.changes == {
            "explanation_status": "PENDING",
            "explanation_request_id": "req-2",
            "explanation_requested_at": utc_text(NOW),
            "explanation_attempts": 1,
        }
        assert (decision.removed, decision.request_id, decision.publish_request) == (
            (),
            "req-2",
            True,
        )

    def test_force_counts_attempts_afresh(self) -> None:
        """A forced request on READY removes the old summary and starts again at attempt 1."""
        art = {**artifact("READY"), "explanation_attempts": 3}
        decision = decide(art, Request(force=True, request_id="req-2", now=NOW))
        assert decision.changes["explanation_attempts"] == 1
        assert decision.removed == ("explanation_summary",)
        assert decision.request_id == "req-2"

    def test_ready_patch(self) -> None:
        """PENDING → READY records the summary and carries the advisory for apply."""
        decision = decide(artifact("PENDING"), patch(advisory=ADVISORY))
        assert decision.changes == {
            "explanation_status": "READY",
            "explanation_summary": "new summary",
        }
        assert (decision.advisory, decision.request_id) == (ADVISORY, "req-1")

    def test_error_patch(self) -> None:
        """PENDING → ERROR records the error only."""
        decision = decide(artifact("PENDING"), patch(status="ERROR", summary="x", error="no"))
        assert decision.changes == {"explanation_status": "ERROR", "explanation_error": "no"}

    def test_timeout_re_request(self) -> None:
        """Past the deadline with attempts left: a new request id, attempts + 1."""
        decision = decide(artifact("PENDING"), Tick(NOW, 300, 3, "req-2"))
        assert decision.changes == {
            "explanation_status": "PENDING",
            "explanation_request_id": "req-2",
            "explanation_requested_at": utc_text(NOW),
            "explanation_attempts": 2,
        }

    def test_timeout_gives_up(self) -> None:
        """On the last attempt the run is ERROR "timed out", for the request that timed out."""
        art = {**artifact("PENDING"), "explanation_attempts": 3}
        decision = decide(art, Tick(NOW, 300, 3, "req-2"))
        assert decision.changes == {"explanation_status": "ERROR", "explanation_error": "timed out"}
        assert (decision.request_id, decision.publish_request) == ("req-1", False)

    def test_tick_at_the_deadline_waits(self) -> None:
        """ "Longer than" the timeout is strict."""
        tick = Tick(T0 + timedelta(seconds=300), 300, 3, "req-2")
        assert decide(artifact("PENDING"), tick).kind == "unchanged"

    def test_pending_without_request_time_is_overdue(self) -> None:
        """A PENDING run with no readable request time is requested again, not left forever."""
        for value in (None, "yesterday"):
            art = {**artifact("PENDING"), "explanation_requested_at": value}
            assert decide(art, Tick(T0, 300, 3, "req-2")).to_status == "PENDING"

    def test_invalid_patch_raises(self) -> None:
        """Validation comes first: decide refuses a malformed patch."""
        with pytest.raises(ValueError, match="summary"):
            decide(artifact("PENDING"), patch(summary=None))

    def test_late_patch_after_timeout_error_is_ignored(self) -> None:
        """A patch for the timed-out request does not undo the ERROR."""
        art = {**artifact("PENDING"), "explanation_attempts": 1}
        timed_out = apply(art, decide(art, Tick(NOW, 300, 1, "req-2")), NOW)
        assert decide(timed_out, patch()).kind == "ignored"


class TestApply:
    """apply makes the next artifact from a transition."""

    def test_revision_and_exact_changes(self) -> None:
        """Revision + 1, ``updated_at_utc`` = now, the changes and removals, nothing else."""
        art = artifact("READY")
        decision = decide(art, Request(force=True, request_id="req-2", now=NOW))
        out = apply(art, decision, NOW)
        assert out["revision"] == 3
        assert out["updated_at_utc"] == utc_text(NOW)
        expected = {k: v for k, v in art.items() if k != "explanation_summary"}
        expected.update(decision.changes, revision=3, updated_at_utc=utc_text(NOW))
        assert out == expected
        assert art == artifact("READY")  # the input is untouched

    def test_creation_stays_revision_one(self) -> None:
        """``bump_revision=False``: the creation request is part of revision 1."""
        art = {**artifact("NONE"), "revision": 1}
        out = apply(art, decide(art, Request(False, "req-1", NOW)), NOW, bump_revision=False)
        assert (out["revision"], out["updated_at_utc"]) == (1, art["updated_at_utc"])
        assert out["explanation_status"] == "PENDING"

    def test_advisory_appended_once_per_id(self) -> None:
        """An advisory whose ``advisory_id`` is already listed is not appended again."""
        art = artifact("PENDING")
        out = apply(art, decide(art, patch(advisory=ADVISORY)), NOW)
        assert out["advisory_inputs"] == [ADVISORY]
        again = {**out, "explanation_status": "PENDING"}
        twice = apply(again, decide(again, patch(advisory=ADVISORY)), NOW)
        assert twice["advisory_inputs"] == [ADVISORY]
        assert art["advisory_inputs"] == []

    def test_advisory_completed(self) -> None:
        """An advisory with only its id gets kind ``unknown`` and the time it is applied."""
        art = artifact("PENDING")
        out = apply(art, decide(art, patch(advisory={"advisory_id": "adv-2"})), NOW)
        entry = {"advisory_id": "adv-2", "kind": "unknown", "created_at_utc": utc_text(NOW)}
        assert out["advisory_inputs"] == [entry]

    def test_only_transitions_apply(self) -> None:
        """Applying an unchanged or ignored decision is a caller bug."""
        decision = Verdict("ignored", "READY", "READY", "req-1", "stale")
        with pytest.raises(ValueError, match="ignored"):
            apply(artifact("READY"), decision, NOW)

    def test_full_lifecycle(self) -> None:
        """Create, time out once, a late patch, the answer, its redelivery, a forced request."""
        art = {**artifact("NONE"), "revision": 1}
        art = apply(art, decide(art, Request(False, "req-1", T0)), T0, bump_revision=False)
        art = apply(art, decide(art, Tick(NOW, 300, 3, "req-2")), NOW)
        assert (art["revision"], art["explanation_attempts"]) == (2, 2)
        assert decide(art, patch(request_id="req-1")).kind == "ignored"
        answer = patch(request_id="req-2", summary="ok")
        art = apply(art, decide(art, answer), NOW)
        assert (art["revision"], art["explanation_summary"]) == (3, "ok")
        assert decide(art, answer).kind == "unchanged"
        art = apply(art, decide(art, Request(True, "req-3", NOW)), NOW)
        assert (art["explanation_status"], art["explanation_attempts"]) == ("PENDING", 1)
        assert "explanation_summary" not in art


class TestValidatePatch:
    """validate_patch names what makes a patch INVALID_PATCH."""

    @pytest.mark.parametrize(
        ("bad", "words"),
        [
            (patch(summary=None), "summary"),
            (patch(summary=""), "summary"),
            (patch(summary="x" * 4001), "summary"),
            (patch(status="ERROR", summary="fine", error=None), "error"),
            (patch(status="DONE"), "status"),
            (patch(request_id=""), "request_id"),
            (patch(advisory={"kind": "note"}), "advisory_id"),
        ],
    )
    def test_invalid(self, bad: Patch, words: str) -> None:
        """Each malformed patch has a reason that names the field."""
        reason = validate_patch(bad)
        assert reason is not None
        assert words in reason

    @pytest.mark.parametrize(
        "good",
        [
            patch(summary="x"),
            patch(summary="x" * 4000, error="ignored on READY"),
            patch(status="ERROR", summary=None, error="no"),
            patch(advisory=ADVISORY),
        ],
    )
    def test_valid(self, good: Patch) -> None:
        """A well-formed patch has no reason."""
        assert validate_patch(good) is None


class TestWantsExplanation:
    """The creation policy: explain decides, else anything not OK and GREEN is explained."""

    @pytest.mark.parametrize(
        ("explain", "status", "risk", "want"),
        [
            (True, "OK", "GREEN", True),
            (False, "ERROR", "RED", False),
            (None, "OK", "GREEN", False),
            (None, "OK", "YELLOW", True),
            (None, "OK", None, True),
            (None, "BLOCKED", "GREEN", True),
            (None, "ERROR", "ERROR", True),
        ],
    )
    def test_policy(self, explain: bool | None, status: str, risk: str | None, want: bool) -> None:
        """One row of the policy."""
        assert wants_explanation(explain, status, risk) is want
