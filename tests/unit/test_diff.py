"""``diff``: the differing leaves of two runs' immutable cores and their severity (CONTRACT 5)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.core.diff import diff_runs, diff_values, flatten, same
from worker.core.ingest import build_artifact, check_event

H = {c: c * 64 for c in "abcdef"}


def run(**fields: Any) -> dict[str, Any]:
    """A stored-looking artifact; ``fields`` replace top-level keys, None removes one."""
    art: dict[str, Any] = {
        "schema": "rmos.run_artifact.v1",
        "run_id": "run_" + "1" * 32,
        "event_id": "evt-1",
        "source": "engine-a",
        "mode": "rosette",
        "tool_id": "saw",
        "event_type": "feasibility",
        "status": "OK",
        "feasibility": {"passes": [{"depth": 1.5, "feed": {"xy": 900}}], "ok": True},
        "decision": {"risk_level": "GREEN", "score": 90, "warnings": ["w0", "w1"]},
        "hashes": {
            "feasibility_sha256": H["a"],
            "request_sha256": H["b"],
            "toolpaths_sha256": H["c"],
            "gcode_sha256": H["d"],
            "event_sha256": H["e"],
        },
        "notes": "first",
        "created_at_utc": "2026-11-24T10:00:00.000000+00:00",
        "recorded_at_utc": "2026-11-24T10:00:01.000000+00:00",
        "updated_at_utc": "2026-11-24T10:00:01.000000+00:00",
        "revision": 1,
        "meta": {},
        "advisory_inputs": [],
        "explanation_status": "NONE",
        "explanation_attempts": 0,
        "content_sha256": H["f"],
    }
    for key, value in fields.items():
        if value is None:
            art.pop(key, None)
        else:
            art[key] = value
    return art


def with_path(path: str, value: Any, **fields: Any) -> dict[str, Any]:
    """``run(**fields)`` with one nested dict value replaced (``"decision.score"``)."""
    art = copy.deepcopy(run(**fields))
    *parents, last = path.split(".")
    node = art
    for key in parents:
        node = node[key]
    node[last] = value
    return art


def without_path(path: str) -> dict[str, Any]:
    """``run()`` with one nested dict key removed."""
    art = copy.deepcopy(run())
    *parents, last = path.split(".")
    node = art
    for key in parents:
        node = node[key]
    del node[last]
    return art


class TestFlatten:
    """Leaves by dot-joined path; empty containers below the root are leaves."""

    @pytest.mark.parametrize(
        ("value", "prefix", "leaves"),
        [
            ({}, "", {}),
            ([], "", {}),
            ({}, "x", {"x": {}}),
            (5, "", {"": 5}),
            (5, "x", {"x": 5}),
            ({"a": 1, "b": None}, "", {"a": 1, "b": None}),
            ({"a": {"b": {"c": [1, {"d": 2}]}}}, "", {"a.b.c.0": 1, "a.b.c.1.d": 2}),
            ({"w": ["x", "y"]}, "decision", {"decision.w.0": "x", "decision.w.1": "y"}),
            ({"e": [], "o": {}, "n": [[]]}, "", {"e": [], "o": {}, "n.0": []}),
        ],
    )
    def test_leaves(self, value: Any, prefix: str, leaves: dict[str, Any]) -> None:
        """Each leaf appears once under its full path."""
        assert flatten(value, prefix) == leaves


class TestSeverity:
    """CRITICAL for status, risk level, toolpaths and G-code hashes; WARNING for request,
    feasibility and score; else INFO."""

    @pytest.mark.parametrize(
        ("b", "severity", "paths"),
        [
            (run(), "INFO", []),
            (run(status="BLOCKED"), "CRITICAL", ["status"]),
            (with_path("decision.risk_level", "RED"), "CRITICAL", ["decision.risk_level"]),
            (with_path("hashes.toolpaths_sha256", H["e"]), "CRITICAL", ["hashes.toolpaths_sha256"]),
            (with_path("hashes.gcode_sha256", H["e"]), "CRITICAL", ["hashes.gcode_sha256"]),
            (without_path("hashes.gcode_sha256"), "CRITICAL", ["hashes.gcode_sha256"]),
            (with_path("hashes.request_sha256", H["e"]), "WARNING", ["hashes.request_sha256"]),
            (
                with_path("hashes.feasibility_sha256", H["e"]),
                "WARNING",
                ["hashes.feasibility_sha256"],
            ),
            (with_path("decision.score", 40), "WARNING", ["decision.score"]),
            (without_path("decision.score"), "WARNING", ["decision.score"]),
            (with_path("decision.score", 90.0), "INFO", []),
            (
                with_path("decision.score", 40, status="ERROR"),
                "CRITICAL",
                ["decision.score", "status"],
            ),
            (run(notes="second"), "INFO", ["notes"]),
            (with_path("hashes.opplan_sha256", H["e"]), "INFO", ["hashes.opplan_sha256"]),
            (with_path("decision.warnings", ["w0", "w2"]), "INFO", ["decision.warnings.1"]),
            (run(engine_version="2.0"), "INFO", ["engine_version"]),
        ],
    )
    def test_rule(self, b: dict[str, Any], severity: str, paths: list[str]) -> None:
        """Each rule of the contract gives its severity, with the changed leaves listed."""
        result = diff_runs(run(), b)
        assert result["severity"] == severity
        assert result["changed_paths"] == paths
        assert [c["path"] for c in result["changes"]] == paths

    def test_symmetric(self) -> None:
        """Swapping the runs keeps the severity and paths and swaps the values."""
        a, b = run(), with_path("decision.risk_level", "RED")
        forward, backward = diff_runs(a, b), diff_runs(b, a)
        assert forward["severity"] == backward["severity"] == "CRITICAL"
        assert forward["changes"] == [{"path": "decision.risk_level", "a": "GREEN", "b": "RED"}]
        assert backward["changes"] == [{"path": "decision.risk_level", "a": "RED", "b": "GREEN"}]


class TestPaths:
    """Paths are dot-joined keys and list indexes; absent values are null; only leaves show."""

    @pytest.mark.parametrize(
        ("b", "changes"),
        [
            (
                with_path("feasibility.passes", [{"depth": 1.5, "feed": {"xy": 1200}}]),
                [{"path": "feasibility.passes.0.feed.xy", "a": 900, "b": 1200}],
            ),
            (
                with_path("decision.warnings", ["w0", "w1", "w2"]),
                [{"path": "decision.warnings.2", "a": None, "b": "w2"}],
            ),
            (
                with_path("decision.warnings", ["w0"]),
                [{"path": "decision.warnings.1", "a": "w1", "b": None}],
            ),
            (run(notes=None), [{"path": "notes", "a": "first", "b": None}]),
            (run(gate_decision="ALLOWED"), [{"path": "gate_decision", "a": None, "b": "ALLOWED"}]),
            (
                run(feasibility=None),
                [
                    {"path": "feasibility.ok", "a": True, "b": None},
                    {"path": "feasibility.passes.0.depth", "a": 1.5, "b": None},
                    {"path": "feasibility.passes.0.feed.xy", "a": 900, "b": None},
                ],
            ),
            (with_path("feasibility.ok", 1), [{"path": "feasibility.ok", "a": True, "b": 1}]),
        ],
    )
    def test_changes(self, b: dict[str, Any], changes: list[dict[str, Any]]) -> None:
        """Each differing leaf is one ``{path, a, b}``, in path order."""
        result = diff_runs(run(), b)
        assert result["changes"] == changes
        assert result["changed_paths"] == [c["path"] for c in changes]

    @pytest.mark.parametrize(
        ("a", "b", "changes"),
        [
            ({"w": []}, {"w": [1]}, [{"path": "w", "a": [], "b": [1]}]),
            ({"w": []}, {}, [{"path": "w", "a": [], "b": None}]),
            ({"w": {}}, {"w": []}, [{"path": "w", "a": {}, "b": []}]),
            ({"d": 5}, {"d": {"x": {"y": 1}}}, [{"path": "d", "a": 5, "b": {"x": {"y": 1}}}]),
            ({"d": {"x": 1}}, {"d": {"x": [2, 3]}}, [{"path": "d.x", "a": 1, "b": [2, 3]}]),
            ({"n": None}, {}, [{"path": "n", "a": None, "b": None}]),
            ({"n": None}, {"n": None}, []),
            (
                {"x": [10, 2]},
                {"x": [11, 3]},
                [{"path": "x.0", "a": 10, "b": 11}, {"path": "x.1", "a": 2, "b": 3}],
            ),
        ],
    )
    def test_containers(self, a: dict[str, Any], b: dict[str, Any], changes: list[Any]) -> None:
        """Empty containers and type changes show as one change at the deepest shared path."""
        assert diff_values(a, b) == changes

    def test_sorted_as_strings(self) -> None:
        """Paths are in plain string order, so index 10 comes before index 2."""
        a = {"x": list(range(11))}
        b = {"x": [-1, 1, -2, *range(3, 10), 99]}
        assert [c["path"] for c in diff_values(a, b)] == ["x.0", "x.10", "x.2"]


class TestIgnored:
    """Ids, times, the content and event hashes and every mutable field are never compared."""

    @pytest.mark.parametrize(
        "b",
        [
            run(run_id="run_" + "2" * 32, event_id="evt-2", content_sha256=H["a"]),
            run(created_at_utc="2030-01-01T00:00:00.000000+00:00"),
            run(recorded_at_utc="2030-01-01T00:00:00.000000+00:00"),
            with_path("hashes.event_sha256", H["a"]),
            without_path("hashes.event_sha256"),
            run(meta={"operator": "x", "guard": {"claimed_status": "OK"}}),
            run(revision=9, updated_at_utc="2030-01-01T00:00:00.000000+00:00"),
            run(advisory_inputs=[{"advisory_id": "a", "kind": "note"}]),
            run(explanation_status="READY", explanation_summary="fine", explanation_attempts=2),
            run(explanation_error="timed out", explanation_request_id="r-1"),
        ],
    )
    def test_no_change(self, b: dict[str, Any]) -> None:
        """A difference only in ignored or mutable fields is INFO with no changes."""
        assert diff_runs(run(), b) == {"severity": "INFO", "changed_paths": [], "changes": []}

    def test_two_built_runs(self) -> None:
        """Two events with the same content but other ids and times differ in nothing compared."""

        def build(event_id: str, second: int) -> dict[str, Any]:
            body = {
                "schema": "rmos.run_event.v1",
                "event_id": event_id,
                "source": "engine-a",
                "mode": "m",
                "tool_id": "t",
                "event_type": "e",
                "status": "OK",
                "feasibility": {"d": 1},
                "decision": {"risk_level": "GREEN"},
            }
            checked = check_event(
                json.dumps(body).encode(), subject_source="engine-a", max_bytes=4096
            )
            when = datetime(2026, 11, 24, 10, 0, second, tzinfo=UTC)
            return build_artifact(checked, parent=None, stored_at=when, now=when)

        a, b = build("evt-1", 1), build("evt-2", 2)
        assert a["created_at_utc"] != b["created_at_utc"]
        assert a["content_sha256"] != b["content_sha256"]
        assert diff_runs(a, b)["changes"] == []

    def test_occurred_at_is_compared(self) -> None:
        """``occurred_at`` is an event field the contract does not exclude: an INFO change."""
        result = diff_runs(run(occurred_at="2026-11-24T10:00:00Z"), run())
        assert result["severity"] == "INFO"
        assert result["changes"] == [
            {"path": "occurred_at", "a": "2026-11-24T10:00:00Z", "b": None}
        ]


_JSON_LEAF = st.none() | st.booleans() | st.integers(-5, 5) | st.sampled_from(["x", "y"])
_JSON = st.recursive(
    _JSON_LEAF,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["a", "b", "c"]), inner, max_size=3)
    ),
    max_leaves=8,
)
_DOCS = st.dictionaries(st.sampled_from(["a", "b", "c"]), _JSON, max_size=3)


class TestProperties:
    """For any two documents: no change is reported twice or under another; none iff equal."""

    @given(_DOCS, _DOCS)
    def test_leaves_only(self, a: dict[str, Any], b: dict[str, Any]) -> None:
        """No reported path is a parent of another, and changes are empty exactly when equal."""
        paths = [c["path"] for c in diff_values(a, b)]
        assert paths == sorted(set(paths))
        assert not any(q.startswith(p + ".") for p in paths for q in paths)
        assert (paths == []) == same(a, b)
        assert diff_values(a, a) == []
