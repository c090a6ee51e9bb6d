"""The explanation state machine (CONTRACT section 4), as pure functions. No I/O, no clock.

``NONE → PENDING → READY | ERROR``, and back to ``PENDING`` only by a forced request or a timeout
re-request. :func:`decide` reads the artifact and one message (:class:`Request`, :class:`Patch` or
:class:`Tick`) and says what to do; :func:`apply` turns a transition into the next artifact. The
caller passes ``now`` and every new ``request_id``.

Where the contract is silent:

- the artifact holds the outcome of its current request only: ``READY`` sets the summary and
  removes ``explanation_error``, ``ERROR`` the reverse, and a move to ``PENDING`` removes both;
- a patch not applied is ``unchanged`` when it repeats the current outcome (same request id,
  status, summary and error), else ``ignored``; on ``NONE`` every patch is ignored;
- a ``PENDING`` run without a readable ``explanation_requested_at`` is overdue (it never stays
  ``PENDING`` forever); "longer than the timeout" is strict: a tick at the deadline waits;
- the timeout ``ERROR`` keeps ``explanation_attempts`` and the timed-out ``request_id``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from contracts.models import parse_timestamp
from worker.core.timefmt import utc_text

MAX_SUMMARY_CHARS = 4000
TIMED_OUT = "timed out"
_OUTCOME_KEYS = ("explanation_summary", "explanation_error")
Kind = Literal["transition", "unchanged", "ignored"]


@dataclass(frozen=True, slots=True)
class Request:
    """An explanation request, from ``api.explain`` or from creation."""

    force: bool
    request_id: str
    now: datetime


@dataclass(frozen=True, slots=True)
class Patch:
    """An explainer's answer to one request."""

    request_id: str
    status: Literal["READY", "ERROR"]
    summary: str | None
    error: str | None
    advisory: dict[str, Any] | None
    explainer_id: str


@dataclass(frozen=True, slots=True)
class Tick:
    """The deadline sweep; ``request_id`` is used only if a re-request is due."""

    now: datetime
    timeout_s: float
    max_attempts: int
    request_id: str


Message = Request | Patch | Tick


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one message does to one artifact; only a ``transition`` changes it."""

    kind: Kind
    from_status: str
    to_status: str
    request_id: str | None
    reason: str
    changes: dict[str, Any] = field(default_factory=dict)
    removed: tuple[str, ...] = ()
    publish_request: bool = False
    advisory: dict[str, Any] | None = None


def wants_explanation(event_explain: bool | None, status: str, risk_level: str | None) -> bool:
    """The creation policy: ``explain`` decides; absent, any run not OK and GREEN is explained."""
    if event_explain is not None:
        return event_explain
    return status != "OK" or risk_level != "GREEN"


def validate_patch(patch: Patch) -> str | None:
    """Why a patch is malformed (``INVALID_PATCH``), or None when it may be decided on."""
    if not patch.request_id:
        return "request_id is empty"
    if patch.status not in ("READY", "ERROR"):
        return f"status {patch.status!r} is not READY or ERROR"
    if patch.status == "READY" and not _text_ok(patch.summary):
        return f"a READY patch needs a summary of 1–{MAX_SUMMARY_CHARS} characters"
    if patch.status == "ERROR" and not _text_ok(patch.error):
        return f"an ERROR patch needs an error of 1–{MAX_SUMMARY_CHARS} characters"
    if patch.advisory is not None and not isinstance(patch.advisory.get("advisory_id"), str):
        return "advisory must be an object with an advisory_id"
    return None


def _text_ok(text: str | None) -> bool:
    return isinstance(text, str) and 1 <= len(text) <= MAX_SUMMARY_CHARS


def decide(artifact: dict[str, Any], message: Message) -> Verdict:
    """The decision for one message; a malformed patch (see :func:`validate_patch`) raises."""
    if isinstance(message, Request):
        return _on_request(artifact, message)
    if isinstance(message, Patch):
        return _on_patch(artifact, message)
    return _on_tick(artifact, message)


def _stay(artifact: dict[str, Any], kind: Kind, reason: str) -> Verdict:
    status = artifact["explanation_status"]
    return Verdict(kind, status, status, artifact.get("explanation_request_id"), reason)


def _move(
    artifact: dict[str, Any], to: str, sets: dict[str, Any], reason: str, **kw: Any
) -> Verdict:
    """A transition to ``to``: ``sets`` and the status; outcome keys not in ``sets`` are removed."""
    removed = tuple(k for k in _OUTCOME_KEYS if k not in sets and k in artifact)
    request_id = sets.get("explanation_request_id", artifact.get("explanation_request_id"))
    changes = {"explanation_status": to, **sets}
    from_status = artifact["explanation_status"]
    return Verdict("transition", from_status, to, request_id, reason, changes, removed, **kw)


def _request(
    artifact: dict[str, Any], request_id: str, now: datetime, attempts: int, why: str
) -> Verdict:
    sets = {
        "explanation_request_id": request_id,
        "explanation_requested_at": utc_text(now),
        "explanation_attempts": attempts,
    }
    return _move(artifact, "PENDING", sets, why, publish_request=True)


def _on_request(artifact: dict[str, Any], request: Request) -> Verdict:
    status = artifact["explanation_status"]
    if status == "NONE":
        return _request(artifact, request.request_id, request.now, 1, "explanation requested")
    if not request.force:
        return _stay(artifact, "unchanged", f"already {status}; force to request again")
    return _request(artifact, request.request_id, request.now, 1, "forced new request")


def _on_patch(artifact: dict[str, Any], patch: Patch) -> Verdict:
    problem = validate_patch(patch)
    if problem is not None:
        raise ValueError(f"invalid patch: {problem}")
    status = artifact["explanation_status"]
    current = artifact.get("explanation_request_id")
    if status == "PENDING" and patch.request_id == current:
        sets = _outcome(patch)
        why = f"{patch.explainer_id} answered {patch.status}"
        return _move(artifact, patch.status, sets, why, advisory=patch.advisory)
    if status in ("READY", "ERROR") and _repeats_outcome(artifact, patch):
        return _stay(artifact, "unchanged", "duplicate of the patch already applied")
    return _stay(artifact, "ignored", f"patch for {patch.request_id}, run is {status} {current}")


def _outcome(patch: Patch) -> dict[str, Any]:
    """What a patch records: the summary of a READY, the error of an ERROR (nothing else)."""
    if patch.status == "READY":
        return {"explanation_summary": patch.summary}
    return {"explanation_error": patch.error}


def _repeats_outcome(artifact: dict[str, Any], patch: Patch) -> bool:
    recorded = {k: artifact.get(k) for k in _OUTCOME_KEYS}
    return (
        patch.request_id == artifact.get("explanation_request_id")
        and patch.status == artifact["explanation_status"]
        and recorded == {**dict.fromkeys(_OUTCOME_KEYS), **_outcome(patch)}
    )


def _on_tick(artifact: dict[str, Any], tick: Tick) -> Verdict:
    if artifact["explanation_status"] != "PENDING":
        return _stay(artifact, "unchanged", "not pending")
    deadline = _deadline(artifact, tick.timeout_s)
    if deadline is not None and tick.now <= deadline:
        return _stay(artifact, "unchanged", "before the deadline")
    attempts = int(artifact.get("explanation_attempts") or 0)
    if attempts < tick.max_attempts:
        why = f"timed out; attempt {attempts + 1} of {tick.max_attempts}"
        return _request(artifact, tick.request_id, tick.now, attempts + 1, why)
    why = f"timed out after {attempts} attempts"
    return _move(artifact, "ERROR", {"explanation_error": TIMED_OUT}, why)


def _deadline(artifact: dict[str, Any], timeout_s: float) -> datetime | None:
    """``explanation_requested_at + timeout_s``, or None when the time is missing or unreadable."""
    text = artifact.get("explanation_requested_at")
    try:
        return parse_timestamp(text) + timedelta(seconds=timeout_s) if text else None
    except ValueError:
        return None


def apply(
    artifact: dict[str, Any], decision: Verdict, now: datetime, *, bump_revision: bool = True
) -> dict[str, Any]:
    """The next artifact: a new dict, the input untouched.

    ``bump_revision=False`` folds the change into the current revision (the ``NONE → PENDING`` of
    creation, still revision 1): then neither ``revision`` nor ``updated_at_utc`` moves.
    The advisory is appended unless an entry with its ``advisory_id`` is already there; one
    without ``kind`` or ``created_at_utc`` gets ``unknown`` and ``now`` (CONTRACT section 4).
    """
    if decision.kind != "transition":
        raise ValueError(f"nothing to apply: the decision is {decision.kind}")
    out = {k: v for k, v in artifact.items() if k not in decision.removed}
    out.update(decision.changes)
    advisories = list(artifact.get("advisory_inputs", []))
    known = {a.get("advisory_id") for a in advisories}
    if decision.advisory is not None and decision.advisory["advisory_id"] not in known:
        entry = {"kind": "unknown", "created_at_utc": utc_text(now), **decision.advisory}
        out["advisory_inputs"] = [*advisories, entry]
    if bump_revision:
        out["revision"] = artifact["revision"] + 1
        out["updated_at_utc"] = utc_text(now)
    return out
