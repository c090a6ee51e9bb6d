"""The contract as one AsyncAPI 3.0 document: every channel, operation, header and payload.

``asyncapi()`` builds it from ``contracts.subjects`` (the default prefixes) and the wire models
of ``contracts.schema``; ``python -m contracts.asyncapi [PATH]`` writes it (default
``contracts/schemas/asyncapi.json``, the committed copy a unit test keeps current).

Operations are from the worker's point of view: it *receives* run events, explanation patches
and API requests, and *sends* explanation requests, status changes, dead letters, checkpoints
and API replies. An API operation is a request-reply: the reply goes to the requester's reply
subject (a NATS inbox), a channel with a null address.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from contracts.api import ERROR_HEADER, FILENAME_HEADER, KIND_HEADER, MIME_HEADER, SHA256_HEADER
from contracts.codes import DeadLetterCode
from contracts.models import (
    RUN_ID_PATTERN,
    DeadLetter,
    ErrorReply,
    ExplanationPatch,
    ExplanationRequested,
    ExplanationStatusChanged,
    RunEvent,
)
from contracts.schema import API_OPS, ASYNCAPI_FILE, MODELS, SCHEMA_DIR, ApiOp, render
from contracts.subjects import (
    EVENTS_CONSUMER,
    EXPLAINER_CONSUMER,
    PATCHES_CONSUMER,
    Subjects,
)
from contracts.transparency import Checkpoint

REF_TEMPLATE = "#/components/schemas/{model}"
MSG_ID = "Nats-Msg-Id"
JSON = "application/json"
RAW = "application/octet-stream"


def component_schemas() -> tuple[dict[type[BaseModel], str], dict[str, Any]]:
    """Every wire model and its sub-models as ``components.schemas``: (model → its name there,
    name → schema), with every ``$ref`` pointing inside the document."""
    models = list(dict.fromkeys(MODELS.values()))
    keys, top = models_json_schema(
        [(model, "validation") for model in models], by_alias=True, ref_template=REF_TEMPLATE
    )
    defs: dict[str, Any] = top["$defs"]
    names = {model: keys[(model, "validation")]["$ref"].rpartition("/")[2] for model in models}
    return names, dict(sorted(defs.items()))


def _header(description: str, **schema: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **schema}


def _headers(required: list[str], properties: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A headers schema: header name → its schema."""
    out: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        out["required"] = required
    return out


def _message(
    name: str,
    summary: str,
    payload: dict[str, Any],
    headers: dict[str, Any] | None = None,
    content_type: str = JSON,
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "name": name,
        "title": name,
        "summary": summary,
        "contentType": content_type,
        "payload": payload,
    }
    if headers is not None:
        message["headers"] = headers
    return message


def _blob_headers(*, put: bool) -> dict[str, dict[str, Any]]:
    if put:
        return {
            KIND_HEADER: _header("the blob's kind; default `unknown`", default="unknown"),
            MIME_HEADER: _header("the blob's MIME type", default=RAW),
            FILENAME_HEADER: _header("the blob's file name; default none"),
        }
    return {
        SHA256_HEADER: _header("the blob's SHA-256, lower-case hex", pattern="^[0-9a-f]{64}$"),
        KIND_HEADER: _header("the kind stored with the blob"),
        MIME_HEADER: _header("the MIME type stored with the blob"),
        FILENAME_HEADER: _header("the file name stored with the blob, when one was given"),
        "content-type": _header("the blob's MIME type"),
    }


def _messages(names: dict[type[BaseModel], str]) -> dict[str, Any]:
    def ref(model: type[BaseModel]) -> dict[str, Any]:
        return {"$ref": REF_TEMPLATE.format(model=names[model])}

    def msg_id(text: str) -> dict[str, Any]:
        return _headers([MSG_ID], {MSG_ID: _header(text)})

    codes = ", ".join(DeadLetterCode)
    messages = {
        "RunEvent": _message(
            "RunEvent",
            "A run event, engine → worker (CONTRACT section 2).",
            ref(RunEvent),
            _headers(
                [],
                {
                    MSG_ID: _header(
                        "`<source>:<event_id>`, so that JetStream drops a retried publish"
                    )
                },
            ),
        ),
        "DeadLetter": _message(
            "DeadLetter",
            f"What could not become an artifact or a transition (CONTRACT section 7): {codes}.",
            ref(DeadLetter),
            msg_id("`dlq:<original stream>:<stream_seq>`: a dead letter sent twice is stored once"),
        ),
        "ExplanationRequested": _message(
            "ExplanationRequested",
            "A request for an explanation of a PENDING run (CONTRACT section 4).",
            ref(ExplanationRequested),
            msg_id("`<request_id>`"),
        ),
        "ExplanationPatch": _message(
            "ExplanationPatch",
            "An explainer's answer: READY with a summary or ERROR with an error.",
            ref(ExplanationPatch),
            _headers([], {MSG_ID: _header("`patch:<request_id>`")}),
        ),
        "ExplanationStatusChanged": _message(
            "ExplanationStatusChanged",
            "One transition of a run's explanation lifecycle.",
            ref(ExplanationStatusChanged),
            msg_id("`<run_id>:r<revision>`"),
        ),
        "Checkpoint": _message(
            "Checkpoint",
            "A signed tree head of the Merkle log, of strictly growing size.",
            ref(Checkpoint),
            _headers(
                [],
                {
                    "Nats-Expected-Last-Sequence": _header(
                        "the stream's last sequence the worker saw: a checkpoint published "
                        "concurrently by another worker is refused, and signed again"
                    )
                },
            ),
        ),
        "ApiErrorReply": _message(
            "ApiErrorReply",
            "The reply to a request that failed; a bad request never goes unanswered.",
            ref(ErrorReply),
            _headers([ERROR_HEADER], {ERROR_HEADER: _header("the error's code")}),
        ),
        "AttachmentsPutRequest": _message(
            "AttachmentsPutRequest",
            "The blob's raw bytes (at most RMOS_MAX_BLOB_BYTES, default 768 KiB).",
            {"type": "string", "format": "binary"},
            _headers([], _blob_headers(put=True)),
            content_type=RAW,
        ),
        "AttachmentsGetReply": _message(
            "AttachmentsGetReply",
            "The blob's raw bytes, with its metadata as headers.",
            {"type": "string", "format": "binary"},
            _headers([SHA256_HEADER], _blob_headers(put=False)),
            content_type=RAW,
        ),
    }
    for op in API_OPS:
        if op.request is not None:
            name = _op_name(op, "Request")
            messages[name] = _message(name, f"api.{op.op}: {op.summary}", ref(op.request))
        if op.reply is not None:
            name = _op_name(op, "Reply")
            messages[name] = _message(name, f"The success reply of api.{op.op}.", ref(op.reply))
    return messages


def _op_name(op: ApiOp, side: str) -> str:
    camel = "".join(part[:1].upper() + part[1:] for part in op.stem.split("_"))
    return camel + side


def _channel_id(op: ApiOp) -> str:
    return op.stem


def _msg_ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/messages/{name}"}


def _channels(subjects: Subjects) -> dict[str, Any]:
    run_id = {
        "description": f"the run's id (`{RUN_ID_PATTERN}`); NATS filter token `*`",
    }
    channels: dict[str, Any] = {
        "events": {
            "address": subjects.event("{source}"),
            "x-nats-subject": subjects.event("*"),
            "title": "Run events",
            "description": (
                f"Stream `{subjects.events_stream}`; the worker's durable consumer is "
                f"`{EVENTS_CONSUMER}`."
            ),
            "parameters": {
                "source": {
                    "description": (
                        "the engine's id (`[A-Za-z0-9_-]{1,64}`), equal to the event's `source`"
                    )
                }
            },
            "messages": {"runEvent": _msg_ref("RunEvent")},
        },
        "deadLetters": {
            "address": subjects.dead_letter("{code}"),
            "x-nats-subject": subjects.dead_letter("*"),
            "title": "Dead letters",
            "description": f"Stream `{subjects.dlq_stream}`.",
            "parameters": {"code": {"enum": list(DeadLetterCode), "description": "why"}},
            "messages": {"deadLetter": _msg_ref("DeadLetter")},
        },
        "explainRequested": {
            "address": subjects.explain_requested,
            "title": "Explanation requests",
            "description": (
                f"Stream `{subjects.explain_stream}`; the reference explainer's durable "
                f"consumer is `{EXPLAINER_CONSUMER}`."
            ),
            "messages": {"explanationRequested": _msg_ref("ExplanationRequested")},
        },
        "explainPatch": {
            "address": subjects.explain_patch("{run_id}"),
            "x-nats-subject": subjects.explain_patch("*"),
            "title": "Explanation patches",
            "description": (
                f"Stream `{subjects.explain_stream}`; the worker's durable consumer is "
                f"`{PATCHES_CONSUMER}`. The body's `run_id` must equal the subject's."
            ),
            "parameters": {"run_id": run_id},
            "messages": {"explanationPatch": _msg_ref("ExplanationPatch")},
        },
        "explainStatus": {
            "address": subjects.explain_status("{run_id}"),
            "x-nats-subject": subjects.explain_status("*"),
            "title": "Explanation status changes",
            "description": f"Stream `{subjects.explain_stream}`.",
            "parameters": {"run_id": run_id},
            "messages": {"explanationStatusChanged": _msg_ref("ExplanationStatusChanged")},
        },
        "checkpoints": {
            "address": subjects.checkpoints,
            "title": "Log checkpoints",
            "description": f"Stream `{subjects.checkpoints_stream}`.",
            "messages": {"checkpoint": _msg_ref("Checkpoint")},
        },
    }
    for op in API_OPS:
        request = (
            _msg_ref(_op_name(op, "Request"))
            if op.request is not None
            else _msg_ref("AttachmentsPutRequest")
        )
        reply = (
            _msg_ref(_op_name(op, "Reply"))
            if op.reply is not None
            else _msg_ref("AttachmentsGetReply")
        )
        channels[_channel_id(op)] = {
            "address": subjects.api_op(op.op),
            "title": f"api.{op.op}",
            "description": f"A core NATS request (no stream). {op.summary}",
            "messages": {"request": request},
        }
        channels[_channel_id(op) + "_reply"] = {
            "address": None,
            "title": f"api.{op.op} reply",
            "description": "The requester's reply subject (its inbox).",
            "messages": {"ok": reply, "error": _msg_ref("ApiErrorReply")},
        }
    return channels


def _operation(action: str, channel: str, messages: list[str], summary: str) -> dict[str, Any]:
    return {
        "action": action,
        "channel": {"$ref": f"#/channels/{channel}"},
        "summary": summary,
        "messages": [{"$ref": f"#/channels/{channel}/messages/{m}"} for m in messages],
    }


def _operations() -> dict[str, Any]:
    operations: dict[str, Any] = {
        "receiveRunEvent": _operation(
            "receive", "events", ["runEvent"], "Ingest a run event into an artifact."
        ),
        "sendDeadLetter": _operation(
            "send", "deadLetters", ["deadLetter"], "Dead-letter what cannot be ingested."
        ),
        "sendExplanationRequested": _operation(
            "send",
            "explainRequested",
            ["explanationRequested"],
            "Request an explanation of a run.",
        ),
        "receiveExplanationPatch": _operation(
            "receive", "explainPatch", ["explanationPatch"], "Apply an explainer's answer."
        ),
        "sendExplanationStatusChanged": _operation(
            "send",
            "explainStatus",
            ["explanationStatusChanged"],
            "Announce a lifecycle transition.",
        ),
        "sendCheckpoint": _operation(
            "send", "checkpoints", ["checkpoint"], "Publish a signed head of the log."
        ),
    }
    for op in API_OPS:
        channel = _channel_id(op)
        operation = _operation("receive", channel, ["request"], f"Answer api.{op.op}.")
        operation["reply"] = {
            "channel": {"$ref": f"#/channels/{channel}_reply"},
            "messages": [
                {"$ref": f"#/channels/{channel}_reply/messages/ok"},
                {"$ref": f"#/channels/{channel}_reply/messages/error"},
            ],
        }
        operations["api_" + op.op.replace(".", "_")] = operation
    return operations


def asyncapi(subjects: Subjects | None = None) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the contract under ``subjects`` (default prefixes)."""
    subjects = subjects or Subjects()
    names, schemas = component_schemas()
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "rmos-runs wire contract",
            "version": "1",
            "description": (
                "Subjects, messages, headers and payloads of CONTRACT.md, generated from "
                "`contracts/`. Operations are the worker's: it receives run events, patches "
                f"and API requests. Subject prefix `{subjects.prefix}`, stream prefix "
                f"`{subjects.stream_prefix}` (settings RMOS_SUBJECT_PREFIX, RMOS_STREAM_PREFIX)."
            ),
        },
        "defaultContentType": JSON,
        "servers": {
            "nats": {
                "host": "localhost:4222",
                "protocol": "nats",
                "description": "Any NATS server with JetStream (setting RMOS_NATS_URL).",
            }
        },
        "channels": _channels(subjects),
        "operations": _operations(),
        "components": {"messages": _messages(names), "schemas": schemas},
    }


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else SCHEMA_DIR / ASYNCAPI_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render(asyncapi()))
    print(target)
