"""The pure event → artifact core: codes and their precedence, guard, hashes, drift."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
import rfc8785
from hypothesis import example, given, settings
from hypothesis import strategies as st

from contracts.canonical import derive_run_id, sha256_json
from contracts.models import RunArtifact
from worker.core.ingest import (
    CheckedEvent,
    build_artifact,
    check_event,
    content_sha256,
    drop_nulls,
    encoded,
    guard_violations,
)
from worker.errors import RejectedError

from .test_canonical import json_values

STORED_AT = datetime(2026, 11, 24, 10, 0, 0, 123456, tzinfo=UTC)
NOW = datetime(2026, 11, 24, 10, 0, 1, tzinfo=UTC)


def ev(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "schema": "rmos.run_event.v1",
        "event_id": "evt-0001",
        "source": "engine-a",
        "mode": "rosette",
        "tool_id": "saw",
        "event_type": "feasibility",
        "status": "OK",
        "feasibility": {"depth": 1.5},
        "decision": {"risk_level": "GREEN", "score": 90},
    }
    body.update(fields)
    return body


def check(body: dict[str, Any] | bytes, source: str | None = "engine-a") -> CheckedEvent:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return check_event(raw, subject_source=source, max_bytes=4096)


def code_of(body: dict[str, Any] | bytes, source: str | None = "engine-a") -> str:
    with pytest.raises(RejectedError) as info:
        check(body, source)
    return info.value.code


def build(body: dict[str, Any], parent: dict[str, Any] | None = None) -> dict[str, Any]:
    return build_artifact(check(body), parent=parent, stored_at=STORED_AT, now=NOW)


class TestCheckEvent:
    """Each rule of CONTRACT section 2 maps to its dead-letter code."""

    @pytest.mark.parametrize(
        ("body", "code"),
        [
            (b"x" * 5000, "PAYLOAD_TOO_LARGE"),
            (b"{not json", "INVALID_JSON"),
            (b"[1, 2]", "INVALID_JSON"),
            (b'{"a": NaN}', "INVALID_JSON"),
            (ev(schema="rmos.run_event.v2"), "SCHEMA_VIOLATION"),
            (ev(unknown_field=1), "SCHEMA_VIOLATION"),
            (ev(decision={"risk_level": "GREEN", "colour": "red"}), "SCHEMA_VIOLATION"),
            (ev(run_id="../../etc/passwd"), "SCHEMA_VIOLATION"),
            (ev(event_id="a/b"), "SCHEMA_VIOLATION"),
            (ev(status="MAYBE"), "SCHEMA_VIOLATION"),
            (ev(mode=""), "SCHEMA_VIOLATION"),
            (ev(decision={"score": True}), "SCHEMA_VIOLATION"),
            (ev(decision={"score": 101}), "SCHEMA_VIOLATION"),
            (ev(occurred_at="2026-11-24 10:00"), "SCHEMA_VIOLATION"),
            (ev(occurred_at="2026-11-24T10:00:00"), "SCHEMA_VIOLATION"),
            (ev(hashes={"event_sha256": "0" * 64}), "SCHEMA_VIOLATION"),
            (ev(hashes={"gcode_sha256": "ABC"}), "SCHEMA_VIOLATION"),
            (ev(meta={"guard": {}}), "SCHEMA_VIOLATION"),
            (ev(feasibility={"n": 2**53}), "SCHEMA_VIOLATION"),
            (ev(parent_run_id="run_x"), "SCHEMA_VIOLATION"),
            (ev(attachments=[{"sha256": "0" * 64}]), "SCHEMA_VIOLATION"),
            (ev(source="engine-b"), "SOURCE_MISMATCH"),
            (ev(hashes={"feasibility_sha256": "0" * 64}), "HASH_MISMATCH"),
            (ev(request={"a": 1}, hashes={"request_sha256": "1" * 64}), "HASH_MISMATCH"),
        ],
    )
    def test_code(self, body: dict[str, Any] | bytes, code: str) -> None:
        """A broken event is refused with the contract's code."""
        assert code_of(body) == code

    def test_precedence(self) -> None:
        """With several faults, the first in the contract's order names the event."""
        assert code_of(ev(source="engine-b", unknown=1)) == "SCHEMA_VIOLATION"
        wrong_hash = {"feasibility_sha256": "0" * 64}
        assert code_of(ev(source="engine-b", hashes=wrong_hash)) == "SOURCE_MISMATCH"
        assert code_of(json.dumps(ev(pad="x" * 5000)).encode()) == "PAYLOAD_TOO_LARGE"

    def test_detail_names_paths(self) -> None:
        """The detail says where the fault is, without echoing the value."""
        with pytest.raises(RejectedError) as info:
            check(ev(decision={"score": "secret-value"}))
        assert "decision.score" in info.value.detail
        assert "secret-value" not in info.value.detail

    def test_api_create_skips_source_check(self) -> None:
        """``create`` has no subject, so there is no subject token to match."""
        assert check(ev(source="other"), source=None).event["source"] == "other"

    def test_nulls_are_absent(self) -> None:
        """An optional field sent as null is the same event as without it."""
        plain = check(ev())
        with_nulls = check(ev(notes=None, decision={"risk_level": "GREEN", "score": 90, "x": None}))
        assert with_nulls.event_sha256 == plain.event_sha256

    def test_derived_run_id(self) -> None:
        """Without a run id, it derives from source and event id."""
        assert check(ev()).run_id == derive_run_id("engine-a", "evt-0001")
        given = "run_" + "ab" * 16
        assert check(ev(run_id=given)).run_id == given


class TestGuard:
    """An event claiming OK is recorded OK only with a safe risk level and feasibility."""

    @pytest.mark.parametrize(
        ("fields", "violations"),
        [
            ({}, []),
            ({"decision": {"risk_level": "YELLOW"}}, []),
            ({"decision": {"score": 50}}, ["RISK_LEVEL_MISSING"]),
            ({"decision": None}, ["RISK_LEVEL_MISSING"]),
            ({"decision": {"risk_level": "RED"}}, ["RISK_LEVEL_RED"]),
            ({"decision": {"risk_level": "UNKNOWN"}}, ["RISK_LEVEL_UNKNOWN"]),
            ({"decision": {"risk_level": "ERROR"}}, ["RISK_LEVEL_ERROR"]),
            ({"feasibility": None}, ["FEASIBILITY_MISSING"]),
            ({"feasibility": None, "hashes": {"feasibility_sha256": "a" * 64}}, []),
            (
                {"feasibility": None, "decision": None},
                ["RISK_LEVEL_MISSING", "FEASIBILITY_MISSING"],
            ),
            ({"status": "BLOCKED", "decision": {"risk_level": "RED"}}, []),
        ],
    )
    def test_violations(self, fields: dict[str, Any], violations: list[str]) -> None:
        """Each unsafe claim is named by its violation code."""
        assert guard_violations(check(ev(**fields)).event) == violations

    def test_guarded_artifact(self) -> None:
        """A guarded OK is stored BLOCKED with meta.guard and a prefixed block reason."""
        art = build(ev(decision={"risk_level": "RED", "block_reason": "thin wall"}))
        assert art["status"] == "BLOCKED"
        assert art["meta"]["guard"] == {"claimed_status": "OK", "violations": ["RISK_LEVEL_RED"]}
        assert art["decision"]["block_reason"] == "guard: RISK_LEVEL_RED; thin wall"

    def test_guard_without_engine_reason(self) -> None:
        """Without an engine reason the block reason is the guard's alone."""
        art = build(ev(decision=None, feasibility=None))
        assert art["decision"] == {"block_reason": "guard: RISK_LEVEL_MISSING, FEASIBILITY_MISSING"}


class TestArtifact:
    """The revision-1 artifact: fields kept, hashes computed, content hash recomputable."""

    def test_shape(self) -> None:
        """The artifact validates against the contract model and drops request and explain."""
        art = build(ev(request={"design": {"r": 1}, "token": "t"}, explain=True))
        RunArtifact.model_validate(art)
        assert "request" not in art
        assert "explain" not in art
        assert art["schema"] == "rmos.run_artifact.v1"
        assert art["revision"] == 1
        assert art["explanation_status"] == "PENDING"  # explain: true
        assert art["explanation_request_id"] == f"req_{art['run_id'][4:]}_1"
        assert art["explanation_attempts"] == 1
        assert art["explanation_requested_at"] == art["recorded_at_utc"]
        assert art["request_summary"]["keys"] == ["design", "[redacted]"]
        assert art["hashes"]["request_sha256"] == sha256_json({"design": {"r": 1}, "token": "t"})
        assert art["hashes"]["feasibility_sha256"] == sha256_json({"depth": 1.5})

    def test_event_hash_is_of_the_event(self) -> None:
        """``event_sha256`` hashes the event as received, request included."""
        body = ev(request={"a": 1})
        assert build(body)["hashes"]["event_sha256"] == sha256_json(body)

    def test_times(self) -> None:
        """``created_at_utc`` is ``occurred_at`` in UTC, else the stream time."""
        assert build(ev())["created_at_utc"] == "2026-11-24T10:00:00.123456+00:00"
        art = build(ev(occurred_at="2026-11-24T12:30:00.5+02:00"))
        assert art["created_at_utc"] == "2026-11-24T10:30:00.500000+00:00"
        assert art["recorded_at_utc"] == art["updated_at_utc"] == "2026-11-24T10:00:01.000000+00:00"

    def test_content_hash_ignores_mutable_parts(self) -> None:
        """Only the immutable core is hashed: meta, revision and explanation fields are not."""
        art = build(ev())
        assert content_sha256(art) == art["content_sha256"]
        changed = {
            **art,
            "revision": 7,
            "meta": {"x": 1},
            "explanation_status": "READY",
            "advisory_inputs": [{"advisory_id": "a"}],
            "updated_at_utc": "2030-01-01T00:00:00.000000+00:00",
        }
        assert content_sha256(changed) == art["content_sha256"]
        assert content_sha256({**art, "status": "ERROR"}) != art["content_sha256"]


class TestEncodedOnce:
    """An event is walked once; its hashes and its artifact's bytes are what a full walk gives."""

    @settings(max_examples=300)
    @given(
        st.dictionaries(st.text(max_size=6), json_values, max_size=5),
        json_values,
        st.dictionaries(st.text(max_size=6).filter(lambda k: k != "guard"), json_values),
        st.booleans(),
    )
    @example({"whole": 120.0, "tiny": 1e-7}, {"ring": [1.0, -0.0]}, {}, False)
    @example({"\U0001f600": 1.5}, None, {"\ue000": 2.0}, True)
    def test_same_bytes_as_a_full_walk(
        self, feasibility: dict[str, Any], request: Any, meta: dict[str, Any], explain: bool
    ) -> None:
        body = ev(feasibility=feasibility, request=request, meta=meta, explain=explain)
        checked = check_event(json.dumps(body).encode(), subject_source=None, max_bytes=1 << 20)
        assert checked.event_sha256 == sha256_json(drop_nulls(body))
        art = build_artifact(checked, parent=None, stored_at=STORED_AT, now=NOW)
        assert encoded(art, checked.plain) == rfc8785.dumps(art)
        assert art["content_sha256"] == content_sha256(art)
        assert art["hashes"]["feasibility_sha256"] == sha256_json(drop_nulls(body)["feasibility"])
        if request is not None:
            assert art["hashes"]["request_sha256"] == sha256_json(request)


class TestCreationPolicy:
    """Which runs are created PENDING with an explanation request (still revision 1)."""

    @pytest.mark.parametrize(
        ("fields", "status"),
        [
            ({}, "NONE"),  # OK and GREEN
            ({"explain": True}, "PENDING"),
            ({"status": "BLOCKED", "decision": {"risk_level": "RED"}}, "PENDING"),
            ({"status": "BLOCKED", "explain": False}, "NONE"),
            ({"decision": {"risk_level": "YELLOW"}}, "PENDING"),
            ({"decision": {"risk_level": "RED"}}, "PENDING"),  # guarded to BLOCKED
            ({"explain": None}, "NONE"),
        ],
    )
    def test_policy(self, fields: dict[str, Any], status: str) -> None:
        """explain decides; absent or null, a run not OK and GREEN is explained."""
        art = build(ev(**fields))
        assert art["explanation_status"] == status
        assert art["revision"] == 1
        assert art["content_sha256"] == content_sha256(art)


class TestDrift:
    """Lineage against the parent run, computed at ingest."""

    def test_no_parent_field(self) -> None:
        """Without ``parent_run_id`` there are no drift fields."""
        art = build(ev())
        assert "drift_detected" not in art
        assert "drift_summary" not in art

    def test_unknown_parent(self) -> None:
        """A parent that is not stored is reported NOT_FOUND."""
        art = build(ev(parent_run_id="run_" + "1" * 32), parent=None)
        assert art["drift_detected"] is None
        assert art["drift_summary"] == {"parent": "NOT_FOUND"}

    def test_changed_paths(self) -> None:
        """Every differing tracked path is listed by name."""
        parent = build(ev(event_id="p", engine_version="1.0"))
        child = build(
            ev(
                parent_run_id=parent["run_id"],
                engine_version="1.1",
                feasibility={"depth": 2.0},
                decision={"risk_level": "YELLOW"},
            ),
            parent=parent,
        )
        assert child["drift_detected"] is True
        assert child["drift_summary"]["changed"] == [
            "hashes.feasibility_sha256",
            "decision.risk_level",
            "engine_version",
        ]

    def test_same_as_parent(self) -> None:
        """A rerun with identical inputs has no drift."""
        parent = build(ev(event_id="p"))
        child = build(ev(parent_run_id=parent["run_id"]), parent=parent)
        assert child["drift_detected"] is False
        assert child["drift_summary"] == {"changed": []}
