"""Request–reply bodies of CONTRACT section 5 (the operations this worker answers)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from contracts.models import (
    ExplanationStatus,
    Label,
    RiskLevel,
    RunId,
    RunStatus,
    Sha256,
    SourceId,
    Timestamp,
)

KIND_HEADER = "Rmos-Kind"
MIME_HEADER = "Rmos-Mime"
FILENAME_HEADER = "Rmos-Filename"
SHA256_HEADER = "Rmos-Sha256"
ERROR_HEADER = "Rmos-Error"


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class GetRequest(_Request):
    run_id: RunId


class ListFilters(_Request):
    """The ``list`` filters, all optional, combined with AND; unknown ones are refused."""

    status: RunStatus | None = None
    event_type: Label | None = None
    mode: Label | None = None
    tool_id: Label | None = None
    tool_id_prefix: Label | None = None
    source: SourceId | None = None
    risk_level: RiskLevel | None = None
    explanation_status: ExplanationStatus | None = None
    workflow_session_id: Label | None = None
    material_id: Label | None = None
    machine_id: Label | None = None
    parent_run_id: RunId | None = None
    created_from: Timestamp | None = None
    created_to: Timestamp | None = None


class ListRequest(ListFilters):
    limit: Annotated[int, Field(ge=1, le=500)] = 50
    cursor: Annotated[str, Field(max_length=512)] | None = None

    def filters(self) -> dict[str, Any]:
        """The filters that were set, as sent (what a cursor is bound to)."""
        return self.model_dump(exclude_none=True, exclude={"limit", "cursor"})


class PatchMetaRequest(_Request):
    run_id: RunId
    meta_updates: dict[str, Any]
    expected_revision: Annotated[int, Field(ge=1)] | None = None


class ExplainRequest(_Request):
    run_id: RunId
    force: bool = False


class DiffRequest(_Request):
    a: RunId
    b: RunId


class BlobRequest(_Request):
    sha256: Sha256


class LogCheckpointRequest(_Request):
    """``log.checkpoint``: no fields (an empty body is the same)."""


class LogConsistencyRequest(_Request):
    """``log.consistency``: prove the tree of ``first`` leaves a prefix of the tree of
    ``second`` (default: the latest checkpoint's size)."""

    first: Annotated[int, Field(ge=0)]
    second: Annotated[int, Field(ge=0)] | None = None


MAX_LEAVES = 1000


class LogLeavesRequest(_Request):
    """``log.leaves``: the leaves at positions ``start`` to ``end`` (exclusive; at most
    ``start + 1000``, and an ``end`` beyond the log is refused; without ``end``, up to
    ``start + 100`` cut at the log's size)."""

    start: Annotated[int, Field(ge=0)]
    end: Annotated[int, Field(ge=1)] | None = None


class BlobHeaders(_Request):
    """The metadata headers of ``attachments.put``; absent ones get CONTRACT section 5's
    defaults (a blob without ``Rmos-Filename`` has none)."""

    kind: Label = "unknown"
    mime: Label = "application/octet-stream"
    filename: Label | None = None


def _dumps(value: dict[str, Any]) -> bytes:
    """UTF-8 JSON by orjson (a 50-item list page in a tenth of ``json.dumps``'s time); what it
    refuses (an integer beyond 64 bits, say) by ``json.dumps``."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return json.dumps(value, ensure_ascii=False).encode()


def ok_reply(**fields: Any) -> bytes:
    """``{"ok": true, ...}``."""
    return _dumps({"ok": True, **fields})


def error_reply(code: str, message: str, **extra: Any) -> bytes:
    """``{"ok": false, "error": {"code": ..., "message": ...}}``."""
    error = {"code": code, "message": message, **extra}
    return _dumps({"ok": False, "error": error})


class _Reply(BaseModel):
    """A success reply; fields added by a newer worker are ignored, not refused."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class CreateResult(_Reply):
    run_id: str
    revision: int
    duplicate: bool


class RunSummary(_Reply):
    """One item of a ``list`` page."""

    run_id: str
    created_at_utc: str
    status: str
    event_type: str
    mode: str
    tool_id: str
    source: str
    risk_level: str | None
    explanation_status: str
    revision: int


class ListPage(_Reply):
    items: list[RunSummary]
    next_cursor: str | None


class DiffChange(_Reply):
    path: str
    a: Any
    b: Any


class DiffResult(_Reply):
    a: str
    b: str
    severity: Literal["CRITICAL", "WARNING", "INFO"]
    changed_paths: list[str]
    changes: list[DiffChange]


class VerifyCheck(_Reply):
    name: str
    ok: bool
    expected: Any
    actual: Any


class LogInclusion(_Reply):
    """``verify``'s ``log``: the leaf of the run's current revision, and the proof that it is
    in the tree of a signed checkpoint (CONTRACT section 9)."""

    leaf_index: int
    leaf: dict[str, Any]
    leaf_hash: str
    tree_size: int
    inclusion_proof: list[str]
    checkpoint: dict[str, Any]


class VerifyReport(_Reply):
    run_id: str
    valid: bool
    checks: list[VerifyCheck]
    log: LogInclusion | None = None


class CheckpointReply(_Reply):
    checkpoint: dict[str, Any]


class ConsistencyProof(_Reply):
    first: int
    second: int
    first_root: str
    second_root: str
    proof: list[str]


class LeafEntry(_Reply):
    index: int
    leaf_hash: str
    leaf: dict[str, Any]


class LeafRange(_Reply):
    start: int
    end: int
    leaves: list[LeafEntry]


class MetaPatched(_Reply):
    run_id: str
    meta: dict[str, Any]
    revision: int


class ExplainResult(_Reply):
    run_id: str
    request_id: str | None
    explanation_status: str


class Revision(_Reply):
    """One entry of ``history``: what changed, when, why, by what."""

    revision: int
    at: str
    change: Literal["created", "explanation", "advisory", "meta"]
    by: str
    changed: list[str]


class History(_Reply):
    run_id: str
    revisions: list[Revision]


class BlobStored(_Reply):
    sha256: str
    size_bytes: int
