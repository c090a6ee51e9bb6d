"""Event → artifact, as pure functions (CONTRACT sections 2 and 3). No I/O, no clock.

``check_event`` turns raw bytes into a :class:`CheckedEvent` or raises :class:`RejectedError` with
the first code in the contract's precedence order. ``build_artifact`` then applies the hashes, the
safety guard and the drift against the parent. Every hash is taken over parsed dicts, never over
``model_dump()`` output, so that a producer in any language can recompute it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from contracts.canonical import (
    InvalidJsonError,
    NonCanonicalValueError,
    canonical,
    derive_run_id,
    normalize,
    parse_json,
    plain_canonical,
    sha256_hex,
    sha256_json,
)
from contracts.codes import DeadLetterCode
from contracts.models import RunEvent, parse_timestamp
from contracts.summary import summarize_request
from worker.core.lifecycle import Request, apply, decide, wants_explanation
from worker.core.timefmt import utc_text
from worker.errors import RejectedError

ARTIFACT_SCHEMA = "rmos.run_artifact.v1"
_TYPED_OBJECTS = ("decision", "hashes", "outputs")
_NOT_KEPT = frozenset({"request", "explain", "hashes", "schema"})
_GUARD_RISKS = {"RED", "UNKNOWN", "ERROR"}
# The hashes the worker computes when the event does not give them: field, the content hashed.
_HASHED = (("feasibility_sha256", "feasibility"), ("request_sha256", "request"))
DRIFT_PATHS = (
    "hashes.feasibility_sha256",
    "hashes.toolpaths_sha256",
    "hashes.gcode_sha256",
    "hashes.opplan_sha256",
    "decision.risk_level",
    "engine_id",
    "engine_version",
    "toolchain_version",
    "post_processor_version",
    "config_fingerprint",
)
MUTABLE_KEYS = frozenset(
    {"revision", "updated_at_utc", "meta", "advisory_inputs", "content_sha256"}
)


@dataclass(frozen=True, slots=True)
class CheckedEvent:
    """A valid event: the parsed dict (nulls dropped, normalized), its identity and what it
    refers to. ``plain``: the event is plain (``contracts.canonical.normalize``), so what is
    built from it is encoded without another walk."""

    event: dict[str, Any]
    run_id: str
    event_sha256: str
    plain: bool = False

    @property
    def parent_run_id(self) -> str | None:
        return self.event.get("parent_run_id")

    @property
    def attachments(self) -> list[tuple[str, int]]:
        """``(sha256, size_bytes)`` of every attachment the event names."""
        return [(a["sha256"], a["size_bytes"]) for a in self.event.get("attachments", ())]


def check_event(raw: bytes, *, subject_source: str | None, max_bytes: int) -> CheckedEvent:
    """Validate raw event bytes; ``subject_source`` is None for ``api.create`` (no subject)."""
    if len(raw) > max_bytes:
        raise RejectedError(
            DeadLetterCode.PAYLOAD_TOO_LARGE, f"{len(raw)} bytes, limit {max_bytes}"
        )
    try:
        parsed = parse_json(raw)
    except InvalidJsonError as exc:
        raise RejectedError(DeadLetterCode.INVALID_JSON, str(exc)) from None
    except NonCanonicalValueError as exc:  # an integer too long to parse
        raise RejectedError(DeadLetterCode.SCHEMA_VIOLATION, str(exc)) from None
    if not isinstance(parsed, dict):
        raise RejectedError(
            DeadLetterCode.INVALID_JSON,
            f"the body is a JSON {type(parsed).__name__}, not an object",
        )
    event = drop_nulls(parsed)
    _validate_schema(event)
    try:
        event, plain = normalize(event)
    except NonCanonicalValueError as exc:
        raise RejectedError(DeadLetterCode.SCHEMA_VIOLATION, str(exc)) from None
    event_sha256 = sha256_hex(encoded(event, plain))
    if subject_source is not None and event["source"] != subject_source:
        raise RejectedError(
            DeadLetterCode.SOURCE_MISMATCH,
            f"source {event['source']!r} is not the subject's last token {subject_source!r}",
        )
    _check_given_hashes(event, plain)
    run_id = event.get("run_id") or derive_run_id(event["source"], event["event_id"])
    return CheckedEvent(event=event, run_id=run_id, event_sha256=event_sha256, plain=plain)


def encoded(value: Any, plain: bool) -> bytes:
    """``canonical(value)``; without a walk when ``value`` is made of plain parts only."""
    return plain_canonical(value) if plain else canonical(value)


def drop_nulls(event: dict[str, Any]) -> dict[str, Any]:
    """An optional field sent as null is absent: at the top level and in the typed objects."""
    out = {k: v for k, v in event.items() if v is not None}
    for key in _TYPED_OBJECTS:
        if isinstance(out.get(key), dict):
            out[key] = {k: v for k, v in out[key].items() if v is not None}
    if isinstance(out.get("attachments"), list):
        out["attachments"] = [
            {k: v for k, v in a.items() if v is not None} if isinstance(a, dict) else a
            for a in out["attachments"]
        ]
    return out


def _validate_schema(event: dict[str, Any]) -> None:
    try:
        RunEvent.model_validate(event)
    except ValidationError as exc:
        raise RejectedError(DeadLetterCode.SCHEMA_VIOLATION, describe_errors(exc)) from None
    if "event_sha256" in event.get("hashes", {}):
        raise RejectedError(
            DeadLetterCode.SCHEMA_VIOLATION, "hashes.event_sha256: computed by the worker, not sent"
        )
    if "guard" in event.get("meta", {}):
        raise RejectedError(
            DeadLetterCode.SCHEMA_VIOLATION, "meta.guard: written by the worker's safety guard only"
        )


def describe_errors(exc: ValidationError, limit: int = 10) -> str:
    """The first validation errors as ``path: message`` pairs, never echoing input values."""
    parts = []
    for err in exc.errors(include_input=False)[:limit]:
        path = ".".join(str(p) for p in err["loc"]) or "(body)"
        parts.append(f"{path}: {err['msg']}")
    more = exc.error_count() - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _check_given_hashes(event: dict[str, Any], plain: bool) -> None:
    given = event.get("hashes", {})
    for field, content in _HASHED:
        if field in given and content in event:
            actual = sha256_hex(encoded(event[content], plain))
            if actual != given[field]:
                raise RejectedError(
                    DeadLetterCode.HASH_MISMATCH,
                    f"hashes.{field} is {given[field]} but sha256({content}) is {actual}",
                )


def build_artifact(
    checked: CheckedEvent,
    *,
    parent: dict[str, Any] | None,
    stored_at: datetime,
    now: datetime,
) -> dict[str, Any]:
    """The revision-1 artifact of a checked event; ``parent`` is the stored parent run, if any.

    When the creation policy wants an explanation, the run is already ``PENDING`` (still
    revision 1), with the request the caller must publish once the artifact is durable."""
    event = checked.event
    artifact = {k: v for k, v in event.items() if k not in _NOT_KEPT}
    artifact["schema"] = ARTIFACT_SCHEMA
    artifact["run_id"] = checked.run_id
    artifact["hashes"] = _artifact_hashes(checked)
    if "request" in event:
        artifact["request_summary"] = summarize_request(event["request"])
    occurred = parse_timestamp(event["occurred_at"]) if "occurred_at" in event else stored_at
    artifact["created_at_utc"] = utc_text(occurred)
    artifact["recorded_at_utc"] = artifact["updated_at_utc"] = utc_text(now)
    artifact["revision"] = 1
    artifact["explanation_status"] = "NONE"
    artifact["explanation_attempts"] = 0
    artifact["advisory_inputs"] = []
    artifact["meta"] = dict(event.get("meta", {}))
    _apply_guard(artifact, event)
    if "parent_run_id" in event:
        artifact.update(drift_against(artifact, parent))
    artifact["content_sha256"] = sha256_hex(encoded(immutable_core(artifact), checked.plain))
    explain = event.get("explain")
    if wants_explanation(explain, artifact["status"], lookup(artifact, "decision.risk_level")):
        request = Request(force=False, request_id=request_id_for(checked.run_id, 1), now=now)
        artifact = apply(artifact, decide(artifact, request), now, bump_revision=False)
    return artifact


def request_id_for(run_id: str, revision: int) -> str:
    """The id of the explanation request made at ``revision``: unique, and the same on retry."""
    return f"req_{run_id[4:]}_{revision}"


def _artifact_hashes(checked: CheckedEvent) -> dict[str, Any]:
    event = checked.event
    hashes = dict(event.get("hashes", {}))
    for field, content in _HASHED:
        if content in event and field not in hashes:
            hashes[field] = sha256_hex(encoded(event[content], checked.plain))
    hashes["event_sha256"] = checked.event_sha256
    return hashes


def guard_violations(event: dict[str, Any]) -> list[str]:
    """Why an event that claims OK may not be recorded OK (zero client trust)."""
    if event["status"] != "OK":
        return []
    violations = []
    risk = event.get("decision", {}).get("risk_level")
    if risk is None:
        violations.append("RISK_LEVEL_MISSING")
    elif risk in _GUARD_RISKS:
        violations.append(f"RISK_LEVEL_{risk}")
    if "feasibility" not in event and "feasibility_sha256" not in event.get("hashes", {}):
        violations.append("FEASIBILITY_MISSING")
    return violations


def _apply_guard(artifact: dict[str, Any], event: dict[str, Any]) -> None:
    violations = guard_violations(event)
    if not violations:
        return
    decision = dict(artifact.get("decision", {}))
    reason = "guard: " + ", ".join(violations)
    if decision.get("block_reason"):
        reason += "; " + decision["block_reason"]
    decision["block_reason"] = reason
    artifact["decision"] = decision
    artifact["status"] = "BLOCKED"
    artifact["meta"]["guard"] = {"claimed_status": "OK", "violations": violations}


def lookup(document: dict[str, Any], path: str) -> Any:
    """The value at a dot-joined path, or None when any step is absent."""
    value: Any = document
    for key in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def drift_against(artifact: dict[str, Any], parent: dict[str, Any] | None) -> dict[str, Any]:
    """``drift_detected`` and ``drift_summary`` of a run against its parent (None: not stored)."""
    if parent is None:
        return {"drift_detected": None, "drift_summary": {"parent": "NOT_FOUND"}}
    changed = [p for p in DRIFT_PATHS if lookup(artifact, p) != lookup(parent, p)]
    return {"drift_detected": bool(changed), "drift_summary": {"changed": changed}}


def immutable_core(artifact: dict[str, Any]) -> dict[str, Any]:
    """The part of an artifact that never changes after creation."""
    return {
        k: v
        for k, v in artifact.items()
        if k not in MUTABLE_KEYS and not k.startswith("explanation_")
    }


def content_sha256(artifact: dict[str, Any]) -> str:
    """``sha256`` of the immutable core: anyone can recompute it from a ``get`` reply."""
    return sha256_json(immutable_core(artifact))
