"""Wire models of CONTRACT.md, strict: unknown fields and coerced types are rejected.

These models *validate* and *document*; they never produce the bytes that are hashed or stored.
Hashes are taken over the parsed dicts (see ``worker.core.ingest``), because ``model_dump()``
adds defaults and coerces values, and a producer in another language cannot reproduce that.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from contracts.codes import ApiErrorCode, DeadLetterCode

SOURCE_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
EVENT_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
RUN_ID_PATTERN = r"^run_[0-9a-f]{32}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"

SourceId = Annotated[str, StringConstraints(pattern=SOURCE_PATTERN)]
EventId = Annotated[str, StringConstraints(pattern=EVENT_ID_PATTERN)]
RunId = Annotated[str, StringConstraints(pattern=RUN_ID_PATTERN)]
Sha256 = Annotated[str, StringConstraints(pattern=SHA256_PATTERN)]
Label = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Text = Annotated[str, StringConstraints(max_length=4000)]
ShortText = Annotated[str, StringConstraints(max_length=1024)]

_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")


def parse_timestamp(value: str) -> datetime:
    """Parse an RFC 3339 timestamp with an offset; naive or malformed times raise ValueError."""
    if not _RFC3339.match(value):
        raise ValueError("must be an RFC 3339 timestamp with an offset")
    head, _, frac_and_zone = value.partition(".")
    if frac_and_zone:  # Python keeps microseconds: cut nanosecond digits instead of failing.
        digits = re.match(r"\d+", frac_and_zone)
        assert digits is not None
        value = f"{head}.{digits.group()[:6]}{frac_and_zone[digits.end() :]}"
    return datetime.fromisoformat(value.replace("z", "Z"))


def _check_timestamp(value: str) -> str:
    parse_timestamp(value)
    return value


Timestamp = Annotated[str, AfterValidator(_check_timestamp)]


# Literals rather than enums: strict validation of parsed JSON accepts a str for a Literal only.
RunStatus = Literal["OK", "BLOCKED", "ERROR"]
RiskLevel = Literal["GREEN", "YELLOW", "RED", "UNKNOWN", "ERROR"]
ExplanationStatus = Literal["NONE", "PENDING", "READY", "ERROR"]
GateDecision = Literal["ALLOWED", "BLOCKED", "OVERRIDDEN"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Decision(_Strict):
    """The engine's decision; ``details`` is free-form."""

    risk_level: RiskLevel | None = None
    score: Annotated[float, Field(ge=0, le=100)] | None = None
    block_reason: Text | None = None
    warnings: list[Text] | None = None
    details: dict[str, Any] | None = None


class Hashes(_Strict):
    """Hashes an event may carry; ``event_sha256`` belongs to the artifact only."""

    feasibility_sha256: Sha256 | None = None
    request_sha256: Sha256 | None = None
    toolpaths_sha256: Sha256 | None = None
    gcode_sha256: Sha256 | None = None
    opplan_sha256: Sha256 | None = None


class ArtifactHashes(Hashes):
    event_sha256: Sha256


class Outputs(_Strict):
    """Where the engine's outputs went, and the hashes of those kept as attachments."""

    gcode_path: ShortText | None = None
    opplan_path: ShortText | None = None
    preview_svg_path: ShortText | None = None
    gcode_sha256: Sha256 | None = None
    opplan_sha256: Sha256 | None = None
    preview_svg_sha256: Sha256 | None = None


class AttachmentRef(_Strict):
    """A blob already in the content-addressed store (``attachments.put``)."""

    sha256: Sha256
    kind: Label
    mime: Label
    filename: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    size_bytes: Annotated[int, Field(ge=0)]


class AdvisoryRef(_Strict):
    """An entry of ``advisory_inputs``."""

    advisory_id: Label
    kind: Literal["explanation", "advisory", "note", "unknown"] = "unknown"
    created_at_utc: Timestamp
    request_id: Label | None = None
    engine_id: Label | None = None
    engine_version: Label | None = None
    sha256: Sha256 | None = None


class PatchAdvisory(AdvisoryRef):
    """An advisory as an explainer sends it: only ``advisory_id`` is required; a missing
    ``created_at_utc`` is set to when the worker applies the patch (CONTRACT section 4)."""

    created_at_utc: Timestamp | None = None  # type: ignore[assignment]


class _Provenance(_Strict):
    workflow_session_id: Label | None = None
    workflow_mode: Label | None = None
    material_id: Label | None = None
    machine_id: Label | None = None
    toolchain_id: Label | None = None
    post_processor_id: Label | None = None
    geometry_ref: ShortText | None = None
    geometry_hash: ShortText | None = None
    parent_run_id: RunId | None = None
    engine_id: Label | None = None
    engine_version: Label | None = None
    toolchain_version: Label | None = None
    post_processor_version: Label | None = None
    config_fingerprint: ShortText | None = None
    gate_policy_id: Label | None = None
    gate_policy_version: Label | None = None


class _RunFields(_Provenance):
    event_id: EventId
    source: SourceId
    mode: Label
    tool_id: Label
    event_type: Label
    status: RunStatus
    run_id: RunId | None = None
    occurred_at: Timestamp | None = None
    feasibility: dict[str, Any] | None = None
    decision: Decision | None = None
    outputs: Outputs | None = None
    attachments: list[AttachmentRef] | None = None
    gate_decision: GateDecision | None = None
    notes: Text | None = None
    errors: list[Text] | None = None
    meta: dict[str, Any] | None = None


class RunEvent(_RunFields):
    """A run event, engine → worker (CONTRACT section 2)."""

    schema_: Literal["rmos.run_event.v1"] = Field(alias="schema")
    request: Any = None
    hashes: Hashes | None = None
    explain: bool | None = None


class RunArtifact(_RunFields):
    """A stored run artifact, what ``get`` returns (CONTRACT section 3)."""

    schema_: Literal["rmos.run_artifact.v1"] = Field(alias="schema")
    run_id: RunId
    revision: Annotated[int, Field(ge=1)]
    created_at_utc: Timestamp
    recorded_at_utc: Timestamp
    updated_at_utc: Timestamp
    request_summary: dict[str, Any] | None = None
    hashes: ArtifactHashes
    content_sha256: Sha256
    explanation_status: ExplanationStatus
    explanation_summary: Text | None = None
    explanation_error: Text | None = None
    explanation_request_id: Label | None = None
    explanation_requested_at: Timestamp | None = None
    explanation_attempts: Annotated[int, Field(ge=0)] = 0
    advisory_inputs: list[AdvisoryRef] = Field(default_factory=list)
    drift_detected: bool | None = None
    drift_summary: dict[str, Any] | None = None


class DeadLetter(_Strict):
    """Body of a message on ``rmos.runs.v1.dlq.<CODE>`` (CONTRACT section 7)."""

    schema_: Literal["rmos.dead_letter.v1"] = Field(alias="schema")
    code: str
    detail: Annotated[str, StringConstraints(max_length=4096)]
    original_subject: str
    original_headers: dict[str, str]
    payload_b64: str
    payload_truncated: bool
    payload_size: int
    payload_sha256: Sha256
    stream_seq: int | None
    deliveries: int | None
    dead_lettered_at: Timestamp


class ExplanationPatch(_Strict):
    """An explainer's answer, on ``rmos.runs.v1.explain.patch.<run_id>`` (CONTRACT section 4)."""

    schema_: Literal["rmos.explanation_patch.v1"] = Field(alias="schema")
    run_id: RunId
    request_id: Label
    explainer_id: Label
    status: Literal["READY", "ERROR"]
    summary: Annotated[str, StringConstraints(min_length=1, max_length=4000)] | None = None
    error: Annotated[str, StringConstraints(min_length=1, max_length=4000)] | None = None
    advisory: PatchAdvisory | None = None


class ExplanationRequested(_Strict):
    """A request for an explanation, worker → explainers, on ``rmos.runs.v1.explain.requested``
    with ``Nats-Msg-Id: <request_id>`` (CONTRACT section 4). ``run`` is the artifact as stored
    at ``revision``, already ``PENDING`` with this ``request_id``."""

    schema_: Literal["rmos.explanation_requested.v1"] = Field(alias="schema")
    request_id: Label
    run_id: RunId
    revision: Annotated[int, Field(ge=1)]
    requested_at: Timestamp
    run: RunArtifact


class ExplanationStatusChanged(_Strict):
    """A lifecycle transition, worker → anyone, on ``rmos.runs.v1.explain.status.<run_id>`` with
    ``Nats-Msg-Id: <run_id>:r<revision>`` (CONTRACT section 4). ``request_id`` is the run's
    ``explanation_request_id`` (always present, null only for a run that never had one);
    ``summary`` and ``error`` are the run's ``explanation_summary`` / ``explanation_error``
    when it has them."""

    schema_: Literal["rmos.explanation_status_changed.v1"] = Field(alias="schema")
    run_id: RunId
    request_id: Label | None
    from_: ExplanationStatus = Field(alias="from")
    to: ExplanationStatus
    revision: Annotated[int, Field(ge=1)]
    at: Timestamp
    summary: Text | None = None
    error: Text | None = None


class ApiError(BaseModel):
    """The ``error`` of an error reply: a code, a message in words, and maybe more fields
    (``REVISION_CONFLICT`` gives ``expected`` and ``actual``; ``UNAVAILABLE`` gives
    ``retryable: true``)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    code: ApiErrorCode | DeadLetterCode  # a failed ``create``: the code it would dead-letter with
    message: str
    expected: int | None = None
    actual: int | None = None
    retryable: bool | None = None


class ErrorReply(BaseModel):
    """``{"ok": false, "error": {...}}``: the reply to any API request that failed (CONTRACT
    section 5), with the header ``Rmos-Error: <code>``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ok: Literal[False]
    error: ApiError
