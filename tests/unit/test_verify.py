"""``verify``: run id, content hash, feasibility hash and attachment blobs (CONTRACT section 5)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from contracts.canonical import canonical, sha256_hex
from worker.core.ingest import build_artifact, check_event
from worker.core.verify import BlobFacts, Check, verify_artifact

STORED_AT = datetime(2026, 11, 24, 10, 0, 0, 123456, tzinfo=UTC)
NOW = datetime(2026, 11, 24, 10, 0, 1, tzinfo=UTC)
GCODE = b"G21\nG0 X0 Y0\nG1 Z-1.5 F300\n"
SVG = b"<svg xmlns='http://www.w3.org/2000/svg'/>"


def attachment(data: bytes, kind: str, filename: str) -> dict[str, Any]:
    """The attachment entry an engine sends for a blob it has put."""
    return {
        "sha256": sha256_hex(data),
        "kind": kind,
        "mime": "application/octet-stream",
        "filename": filename,
        "size_bytes": len(data),
    }


def build(**fields: Any) -> dict[str, Any]:
    """A revision-1 artifact, built the way the worker builds one."""
    body: dict[str, Any] = {
        "schema": "rmos.run_event.v1",
        "event_id": "evt-0001",
        "source": "engine-a",
        "mode": "rosette",
        "tool_id": "saw",
        "event_type": "feasibility",
        "status": "OK",
        "feasibility": {"passes": [{"depth": 1.5, "feed": {"xy": 900}}]},
        "decision": {"risk_level": "GREEN", "score": 90},
        "notes": "first cut",
        "attachments": [attachment(GCODE, "gcode", "a.nc"), attachment(SVG, "preview", "a.svg")],
    }
    body.update(fields)
    checked = check_event(json.dumps(body).encode(), subject_source="engine-a", max_bytes=8192)
    return build_artifact(checked, parent=None, stored_at=STORED_AT, now=NOW)


def on_disk(*blobs: bytes) -> dict[str, BlobFacts]:
    """What the store finds for each blob: its bytes' hash and size."""
    return {sha256_hex(data): (sha256_hex(data), len(data)) for data in blobs}


ALL_BLOBS = on_disk(GCODE, SVG)


def verify(artifact: Any, blobs: dict[str, BlobFacts] | None = None) -> dict[str, Check]:
    """The checks by name, for an artifact looked up by the built run's id."""
    run_id = build()["run_id"]
    checks = verify_artifact(artifact, ALL_BLOBS if blobs is None else blobs, run_id=run_id)
    by_name = {c.name: c for c in checks}
    assert len(by_name) == len(checks)
    canonical([c.as_dict() for c in checks])  # the reply can always be written
    return by_name


def failed(checks: dict[str, Check]) -> list[str]:
    return [name for name, c in checks.items() if not c.ok]


def tampered(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    art = copy.deepcopy(build())
    change(art)
    return art


class TestValid:
    """An untouched artifact passes every check, in the contract's order."""

    def test_every_check_passes(self) -> None:
        """Run id, content hash, feasibility hash and both attachments all pass."""
        art = build()
        checks = verify_artifact(art, ALL_BLOBS, run_id=art["run_id"])
        assert [c.name for c in checks] == [
            "run_id",
            "content_sha256",
            "feasibility_sha256",
            "attachments.0.sha256",
            "attachments.0.size_bytes",
            "attachments.1.sha256",
            "attachments.1.size_bytes",
        ]
        assert all(c.ok for c in checks)
        assert checks[1].as_dict() == {
            "name": "content_sha256",
            "ok": True,
            "expected": art["content_sha256"],
            "actual": art["content_sha256"],
        }
        assert checks[4].expected == checks[4].actual == len(GCODE)

    def test_without_feasibility_or_attachments(self) -> None:
        """Only what is stored is checked: no feasibility, no attachments, two checks."""
        art = build(feasibility=None, attachments=None, hashes={"feasibility_sha256": "a" * 64})
        assert list(verify(art, {})) == ["run_id", "content_sha256"]
        assert failed(verify(art, {})) == []

    def test_mutable_fields_may_change(self) -> None:
        """meta, revision and the explanation fields are outside the content hash."""
        art = tampered(lambda a: a.update(meta={"x": 1}, revision=4, explanation_status="READY"))
        assert failed(verify(art)) == []


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(art: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = art
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(last) if isinstance(node, list) else last] = value

    return change


class TestTampering:
    """A one-byte change anywhere in the immutable core fails the content hash."""

    @pytest.mark.parametrize(
        ("change", "failing"),
        [
            (_set("notes", "first cuT"), ["content_sha256"]),
            (_set("status", "BLOCKED"), ["content_sha256"]),
            (_set("decision.score", 91), ["content_sha256"]),
            (_set("hashes.event_sha256", "0" * 64), ["content_sha256"]),
            (_set("created_at_utc", "2026-11-24T10:00:00.123457+00:00"), ["content_sha256"]),
            (_set("attachments.1.filename", "b.svg"), ["content_sha256"]),
            (_set("content_sha256", "0" * 64), ["content_sha256"]),
            (
                _set("feasibility.passes.0.feed", {"xy": 901}),
                ["content_sha256", "feasibility_sha256"],
            ),
            (_set("hashes.feasibility_sha256", "0" * 64), ["content_sha256", "feasibility_sha256"]),
            (_set("run_id", "run_" + "0" * 32), ["run_id", "content_sha256"]),
            (_set("extra", 1), ["content_sha256"]),
        ],
    )
    def test_fails(self, change: Callable[[dict[str, Any]], None], failing: list[str]) -> None:
        """Exactly the checks that cover the changed value fail."""
        assert failed(verify(tampered(change))) == failing

    def test_expected_is_the_stored_value(self) -> None:
        """A failed hash check shows the stored hash against the recomputed one."""
        art = build()
        checks = verify(tampered(_set("notes", "x")))
        assert checks["content_sha256"].expected == art["content_sha256"]
        assert checks["content_sha256"].actual != art["content_sha256"]


class TestBlobs:
    """Each attachment's blob must exist, hash to its sha256 and have its declared size."""

    @pytest.mark.parametrize(
        ("blobs", "failing"),
        [
            ({**ALL_BLOBS, sha256_hex(SVG): (sha256_hex(b"<svg/>"), len(SVG))}, ["1.sha256"]),
            ({**ALL_BLOBS, sha256_hex(SVG): (sha256_hex(SVG), len(SVG) + 1)}, ["1.size_bytes"]),
            ({**ALL_BLOBS, sha256_hex(GCODE): None}, ["0.sha256", "0.size_bytes"]),
            (on_disk(SVG), ["0.sha256", "0.size_bytes"]),
            ({}, ["0.sha256", "0.size_bytes", "1.sha256", "1.size_bytes"]),
        ],
    )
    def test_fails(self, blobs: dict[str, BlobFacts], failing: list[str]) -> None:
        """Wrong bytes, wrong size or a missing blob fail that attachment's checks."""
        assert failed(verify(build(), blobs)) == [f"attachments.{f}" for f in failing]

    def test_missing_blob_shows_none(self) -> None:
        """A missing blob has no actual hash or size."""
        checks = verify(build(), on_disk(SVG))
        assert checks["attachments.0.sha256"].actual is None
        assert checks["attachments.0.size_bytes"] == Check(
            "attachments.0.size_bytes", False, len(GCODE), None
        )

    def test_declared_size_tampered(self) -> None:
        """A declared size changed in the record fails the size and the content checks."""
        art = tampered(_set("attachments.0.size_bytes", len(GCODE) + 1))
        assert failed(verify(art)) == ["content_sha256", "attachments.0.size_bytes"]


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda art: art.pop(key)


class TestRobustness:
    """A corrupt record gives failed checks with readable values, never an exception."""

    @pytest.mark.parametrize(
        ("change", "failing"),
        [
            (_drop("hashes"), ["content_sha256", "feasibility_sha256"]),
            (_set("hashes", "gone"), ["content_sha256", "feasibility_sha256"]),
            (_set("feasibility.n", 2**60), ["content_sha256", "feasibility_sha256"]),
            (_set("notes", 10**5000), ["content_sha256"]),
            (_set("content_sha256", 2**60), ["content_sha256"]),
            (_set("run_id", ["run_x"]), ["run_id", "content_sha256"]),
            (_set("attachments", {"0": 1}), ["content_sha256", "attachments"]),
            (_set("attachments.1", "a.svg"), ["content_sha256", "attachments.1"]),
            (
                _set("attachments.0.sha256", None),
                ["content_sha256", "attachments.0.sha256", "attachments.0.size_bytes"],
            ),
        ],
    )
    def test_fails_without_raising(
        self, change: Callable[[dict[str, Any]], None], failing: list[str]
    ) -> None:
        """The damaged parts fail; the reply is still canonical JSON."""
        assert failed(verify(tampered(change))) == failing

    def test_readable_reasons(self) -> None:
        """The reasons say in words what could not be checked."""
        checks = verify(tampered(_set("feasibility.n", 2**60)))
        assert checks["feasibility_sha256"].actual.startswith("not computable: integer")
        assert checks["content_sha256"].actual.startswith("not computable: integer")
        checks = verify(tampered(_drop("hashes")))
        assert checks["feasibility_sha256"].expected == "no hashes"
        checks = verify(tampered(_set("content_sha256", 2**60)))
        assert checks["content_sha256"].expected == "an integer beyond ±(2**53 - 1)"
        checks = verify(tampered(_set("attachments", {"0": 1})))
        assert checks["attachments"].actual == "a JSON object"
        assert len(verify(tampered(_set("notes", 10**5000)))["content_sha256"].actual) < 300

    @pytest.mark.parametrize("artifact", [[], "x", None, 5])
    def test_not_an_object(self, artifact: Any) -> None:
        """A record that is not an object fails its run id and content checks."""
        assert failed(verify(artifact)) == ["run_id", "content_sha256"]
