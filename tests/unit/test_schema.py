"""The committed JSON Schemas and AsyncAPI document match the models, and accept what is sent."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

import jsonschema
import pytest
from pydantic import BaseModel

from contracts.api import error_reply, ok_reply
from contracts.asyncapi import asyncapi
from contracts.codes import ApiErrorCode, DeadLetterCode
from contracts.schema import API_OPS, ASYNCAPI_FILE, MODELS, SCHEMA_DIR, files, render, schemas
from contracts.subjects import Subjects
from contracts.transparency import Checkpoint
from tests.support import event
from worker.core.dead_letter import dead_letter
from worker.core.ingest import build_artifact, check_event
from worker.demo import demo_events
from worker.explanations import Explanations

NOW = datetime(2026, 11, 24, 10, 0, 1, tzinfo=UTC)
DOCUMENT = asyncapi()


class TestSchemas:
    """``contracts/schemas/`` is what other languages build from: it must not go stale."""

    @pytest.mark.parametrize("name", sorted(files()))
    def test_committed_copy_is_current(self, name: str) -> None:
        """Regenerate with ``python -m contracts.schema`` after changing a model."""
        assert (SCHEMA_DIR / name).read_text() == files()[name]

    def test_no_stale_files(self) -> None:
        """Every file in the directory is generated: a removed message leaves no orphan."""
        assert {p.name for p in SCHEMA_DIR.glob("*.json")} == set(files())

    def test_asyncapi_file_is_the_document(self) -> None:
        assert files()[ASYNCAPI_FILE] == render(DOCUMENT)

    def test_event_schema_forbids_unknown_fields(self) -> None:
        """Unknown fields are a schema violation in the schema too, not only in Python."""
        event = json.loads((SCHEMA_DIR / "run_event.v1.json").read_text())
        assert event["additionalProperties"] is False
        assert {"schema", "event_id", "source", "status"} <= set(event["required"])

    def test_every_api_op_has_its_files(self) -> None:
        for op in API_OPS:
            if op.request is not None:
                assert f"{op.stem}_request.v1.json" in MODELS
            if op.reply is not None:
                assert f"{op.stem}_reply.v1.json" in MODELS

    def test_success_replies_say_ok(self) -> None:
        for op in API_OPS:
            if op.reply is not None:
                reply = schemas()[f"{op.stem}_reply.v1.json"]
                assert reply["properties"]["ok"] == {
                    "const": True,
                    "title": "Ok",
                    "type": "boolean",
                }
                assert "ok" in reply["required"]
        error = schemas()["api_error_reply.v1.json"]
        assert error["properties"]["ok"]["const"] is False

    def test_error_codes_are_the_contracts(self) -> None:
        schema = json.loads((SCHEMA_DIR / "api_error_reply.v1.json").read_text())
        codes = {code for enum in schema["$defs"].values() for code in enum.get("enum", [])}
        assert codes == {*ApiErrorCode, *DeadLetterCode}


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for token in ref[2:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict), ref
        assert token in node, ref
        node = node[token]
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


class TestAsyncApi:
    def test_shape(self) -> None:
        assert DOCUMENT["asyncapi"] == "3.0.0"
        assert {"title", "version"} <= set(DOCUMENT["info"])
        assert DOCUMENT["channels"]
        assert DOCUMENT["operations"]

    def test_every_ref_resolves_inside_the_document(self) -> None:
        refs = _refs(DOCUMENT)
        assert refs
        for ref in refs:
            assert isinstance(_resolve(DOCUMENT, ref), dict), ref
        assert not any("$defs" in ref for ref in refs)

    def test_every_subject_is_a_channel(self) -> None:
        subjects = Subjects()
        addresses = {c["address"] for c in DOCUMENT["channels"].values()}
        expected = {
            subjects.event("{source}"),
            subjects.dead_letter("{code}"),
            subjects.explain_requested,
            subjects.explain_patch("{run_id}"),
            subjects.explain_status("{run_id}"),
            subjects.checkpoints,
            *(subjects.api_op(op.op) for op in API_OPS),
        }
        assert expected <= addresses
        for filter_ in subjects.streams().values():  # each stream's subjects have a channel
            head = filter_.removesuffix(">")
            assert any(a and a.startswith(head) for a in addresses), filter_

    def test_every_op_the_worker_answers_is_documented(self) -> None:
        from worker.api import Api

        api = Api(*(cast(Any, None),) * 4, max_blob_bytes=1)
        answered = set(api._ops)
        assert {op.op for op in API_OPS} == answered
        channels = DOCUMENT["channels"]
        assert {c["title"] for c in channels.values()} >= {f"api.{op}" for op in answered}

    def test_operations_are_the_workers(self) -> None:
        operations = DOCUMENT["operations"]
        actions = {name: o["action"] for name, o in operations.items()}
        assert actions["receiveRunEvent"] == "receive"
        assert actions["receiveExplanationPatch"] == "receive"
        for name in ("sendDeadLetter", "sendExplanationRequested", "sendCheckpoint"):
            assert actions[name] == "send"
        for op in API_OPS:
            operation = operations["api_" + op.op.replace(".", "_")]
            assert operation["action"] == "receive"
            reply = _resolve(DOCUMENT, operation["reply"]["channel"]["$ref"])
            assert reply["address"] is None
            assert set(reply["messages"]) == {"ok", "error"}

    def test_headers(self) -> None:
        messages = DOCUMENT["components"]["messages"]
        for name in ("ExplanationRequested", "ExplanationStatusChanged", "DeadLetter"):
            assert "Nats-Msg-Id" in messages[name]["headers"]["required"]
        assert "Nats-Msg-Id" in messages["RunEvent"]["headers"]["properties"]
        assert "Nats-Msg-Id" in messages["ExplanationPatch"]["headers"]["properties"]
        put = messages["AttachmentsPutRequest"]["headers"]["properties"]
        assert {"Rmos-Kind", "Rmos-Mime", "Rmos-Filename"} <= set(put)
        assert put["Rmos-Kind"]["default"] == "unknown"
        assert "Rmos-Sha256" in messages["AttachmentsGetReply"]["headers"]["required"]
        assert messages["ApiErrorReply"]["headers"]["required"] == ["Rmos-Error"]


class _Broker:
    """Catches what ``Explanations`` publishes."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any], dict[str, str]]] = []

    async def publish(self, data: bytes, subject: str, **kw: Any) -> None:
        self.sent.append((subject, json.loads(data), kw["headers"]))


async def _examples() -> list[tuple[str, Any]]:
    """(schema file, a body the worker or a well-behaved client sends)."""
    blocked = next(e for e in demo_events() if e["status"] == "BLOCKED")
    checked = check_event(
        json.dumps(blocked).encode(), subject_source="demo-engine", max_bytes=1 << 20
    )
    run = build_artifact(checked, parent=None, stored_at=NOW, now=NOW)
    assert run["explanation_status"] == "PENDING"
    broker = _Broker()
    settings = SimpleNamespace(subjects=Subjects(), publish_timeout_s=1.0)
    explanations = Explanations(cast(Any, None), cast(Any, broker), cast(Any, settings))
    await explanations.announce_created(run)
    (_, requested, _), (_, status, _) = broker.sent
    letter = dead_letter(
        code="INVALID_JSON",
        detail="not JSON",
        subject="rmos.runs.v1.events.engine-a",
        headers={"Nats-Msg-Id": "engine-a:x"},
        payload=b"{nope",
        stream_seq=7,
        deliveries=1,
        now=NOW,
    )
    patch = {
        "schema": "rmos.explanation_patch.v1",
        "run_id": run["run_id"],
        "request_id": requested["request_id"],
        "explainer_id": "reference",
        "status": "READY",
        "summary": "blocked: depth exceeds stock",
        "advisory": {"advisory_id": "adv-1"},
    }
    checkpoint = Checkpoint(
        origin="rmos",
        tree_size=1,
        root_hash="0" * 64,
        issued_at=run["created_at_utc"],
        key_id="1" * 64,
        signature="c2ln",
    ).as_dict()
    return [
        ("run_event.v1.json", event("evt-1")),
        *(("run_event.v1.json", e) for e in demo_events()),
        ("api_create_request.v1.json", event("evt-2")),
        ("run_artifact.v1.json", run),
        ("explanation_requested.v1.json", requested),
        ("explanation_status_changed.v1.json", status),
        ("explanation_patch.v1.json", patch),
        ("dead_letter.v1.json", letter.model_dump(by_alias=True)),
        ("log_checkpoint.v1.json", checkpoint),
        ("api_get_request.v1.json", {"run_id": run["run_id"]}),
        ("api_list_request.v1.json", {"status": "BLOCKED", "limit": 10}),
        ("api_get_reply.v1.json", json.loads(ok_reply(run=run))),
        ("api_log_checkpoint_reply.v1.json", json.loads(ok_reply(checkpoint=checkpoint))),
        (
            "api_create_reply.v1.json",
            json.loads(ok_reply(run_id=run["run_id"], revision=1, duplicate=False)),
        ),
        ("api_error_reply.v1.json", json.loads(error_reply("RUN_NOT_FOUND", "no run"))),
        (
            "api_error_reply.v1.json",
            json.loads(error_reply("REVISION_CONFLICT", "stale", expected=1, actual=2)),
        ),
    ]


class TestExamples:
    """What is sent is what is documented: known-good bodies pass the model and the schema."""

    async def test_models_accept_what_is_sent(self) -> None:
        for name, body in await _examples():
            model: type[BaseModel] = MODELS[name]
            model.model_validate(body)

    async def test_status_message_is_the_contracts(self) -> None:
        [status] = [b for n, b in await _examples() if n == "explanation_status_changed.v1.json"]
        assert (status["from"], status["to"]) == ("NONE", "PENDING")
        assert set(status) == {"schema", "run_id", "request_id", "from", "to", "revision", "at"}

    async def test_schemas_accept_what_is_sent(self) -> None:
        for name, body in await _examples():
            schema = json.loads((SCHEMA_DIR / name).read_text())
            jsonschema.validate(body, schema)

    async def test_schemas_refuse_an_unknown_field(self) -> None:
        schema = json.loads((SCHEMA_DIR / "run_event.v1.json").read_text())
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**event("evt-3"), "surprise": 1}, schema)
