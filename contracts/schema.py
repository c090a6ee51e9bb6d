"""JSON Schema of the wire messages, for producers and explainers in other languages.

``python -m contracts.schema DIR`` writes one file per message (``<name>.v1.json``) and the
AsyncAPI document (``asyncapi.json``, see ``contracts.asyncapi``); ``contracts/schemas/`` holds
the committed copies, kept current by a unit test.

The API's reply models (``contracts.api``) are what a client parses; on the wire every success
reply also carries ``"ok": true``. The ``*Reply`` models below are those bodies exactly as sent,
with the log's records (``Checkpoint``, ``LeafRecord``) typed where ``contracts.api`` leaves a
free-form object.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from contracts.api import (
    BlobRequest,
    BlobStored,
    ConsistencyProof,
    CreateResult,
    DiffRequest,
    DiffResult,
    ExplainRequest,
    ExplainResult,
    GetRequest,
    History,
    LeafEntry,
    LeafRange,
    ListPage,
    ListRequest,
    LogCheckpointRequest,
    LogConsistencyRequest,
    LogInclusion,
    LogLeavesRequest,
    MetaPatched,
    PatchMetaRequest,
    VerifyReport,
)
from contracts.models import (
    DeadLetter,
    ErrorReply,
    ExplanationPatch,
    ExplanationRequested,
    ExplanationStatusChanged,
    RunArtifact,
    RunEvent,
)
from contracts.transparency import Checkpoint, LeafRecord

SCHEMA_DIR = Path(__file__).parent / "schemas"
ASYNCAPI_FILE = "asyncapi.json"


class _OkReply(BaseModel):
    """A success reply: ``ok`` is true; fields added by a newer worker are allowed."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    ok: Literal[True]


class GetReply(_OkReply):
    run: RunArtifact


class ListReply(_OkReply, ListPage):
    pass


class DiffReply(_OkReply, DiffResult):
    pass


class LogInclusionProof(LogInclusion):
    leaf: LeafRecord  # type: ignore[assignment]
    checkpoint: Checkpoint  # type: ignore[assignment]


class VerifyReply(_OkReply, VerifyReport):
    log: LogInclusionProof | None = None


class HistoryReply(_OkReply, History):
    pass


class PatchMetaReply(_OkReply, MetaPatched):
    pass


class CreateReply(_OkReply, CreateResult):
    pass


class ExplainReply(_OkReply, ExplainResult):
    pass


class AttachmentStoredReply(_OkReply, BlobStored):
    pass


class LogCheckpointReply(_OkReply):
    checkpoint: Checkpoint


class LogConsistencyReply(_OkReply, ConsistencyProof):
    pass


class LogLeaf(LeafEntry):
    leaf: LeafRecord  # type: ignore[assignment]


class LogLeavesReply(_OkReply, LeafRange):
    leaves: list[LogLeaf]  # type: ignore[assignment]


@dataclass(frozen=True)
class ApiOp:
    """One operation of CONTRACT section 5: its JSON request and success reply bodies, or None
    where that side is raw bytes (``attachments.put`` in, ``attachments.get`` out)."""

    op: str
    request: type[BaseModel] | None
    reply: type[BaseModel] | None
    summary: str

    @property
    def stem(self) -> str:
        return "api_" + self.op.replace(".", "_")


API_OPS: tuple[ApiOp, ...] = (
    ApiOp("get", GetRequest, GetReply, "One run's artifact."),
    ApiOp("list", ListRequest, ListReply, "A page of run summaries, newest first."),
    ApiOp("diff", DiffRequest, DiffReply, "What differs between two runs' immutable cores."),
    ApiOp("verify", GetRequest, VerifyReply, "Every hash of a run recomputed, and its log proof."),
    ApiOp("history", GetRequest, HistoryReply, "Every revision of a run, oldest first."),
    ApiOp("patch_meta", PatchMetaRequest, PatchMetaReply, "Set or (null) remove meta keys."),
    ApiOp("create", RunEvent, CreateReply, "A run event, answered once durable."),
    ApiOp("explain", ExplainRequest, ExplainReply, "Request an explanation (force: again)."),
    ApiOp(
        "attachments.put",
        None,
        AttachmentStoredReply,
        "Store raw bytes, content-addressed; metadata from the Rmos-* headers.",
    ),
    ApiOp("attachments.get", BlobRequest, None, "A blob's raw bytes and metadata headers."),
    ApiOp("log.checkpoint", LogCheckpointRequest, LogCheckpointReply, "The latest checkpoint."),
    ApiOp(
        "log.consistency",
        LogConsistencyRequest,
        LogConsistencyReply,
        "A proof that one tree of the log is a prefix of a later one.",
    ),
    ApiOp("log.leaves", LogLeavesRequest, LogLeavesReply, "A range of the log's leaves."),
)


def _models() -> dict[str, type[BaseModel]]:
    models: dict[str, type[BaseModel]] = {
        "run_event.v1.json": RunEvent,
        "run_artifact.v1.json": RunArtifact,
        "dead_letter.v1.json": DeadLetter,
        "explanation_requested.v1.json": ExplanationRequested,
        "explanation_patch.v1.json": ExplanationPatch,
        "explanation_status_changed.v1.json": ExplanationStatusChanged,
        "log_checkpoint.v1.json": Checkpoint,
        "api_error_reply.v1.json": ErrorReply,
    }
    for op in API_OPS:
        if op.request is not None:
            models[f"{op.stem}_request.v1.json"] = op.request
        if op.reply is not None:
            models[f"{op.stem}_reply.v1.json"] = op.reply
    return models


MODELS: dict[str, type[BaseModel]] = _models()


def schemas() -> dict[str, dict[str, Any]]:
    """File name → JSON Schema (by alias, so ``schema`` is spelled as on the wire)."""
    return {name: model.model_json_schema(by_alias=True) for name, model in MODELS.items()}


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def files() -> dict[str, str]:
    """File name → content of every generated file of ``contracts/schemas/``."""
    from contracts.asyncapi import asyncapi  # imports this module

    rendered = {name: render(schema) for name, schema in schemas().items()}
    rendered[ASYNCAPI_FILE] = render(asyncapi())
    return rendered


def export(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in files().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written


if __name__ == "__main__":
    for path in export(Path(sys.argv[1]) if len(sys.argv) > 1 else SCHEMA_DIR):
        print(path)
