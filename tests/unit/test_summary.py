"""``request_summary`` keeps a request's structure, never its values (CONTRACT section 6)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from contracts.summary import summarize_request

SECRET_WORDS = ["secret", "token", "password", "api_key", "credential", "authorization"]
IDS = ["model_id", "feasibility_engine_id", "tool_id", "material_id", "machine_id"]


def _case_variants(word: str) -> list[str]:
    return [word, word.upper(), word.title(), word[0].upper() + word[1:]]


class TestRedaction:
    """Keys whose name contains a secret word, in any case, are listed as "[redacted]"."""

    @pytest.mark.parametrize(
        "key",
        [v for w in SECRET_WORDS for v in _case_variants(w)]
        + ["client_secret", "X-Auth-Token", "db_Password_hash", "OPENAI_API_KEY", "Authorization"]
        + ["credentials", "refresh_token_v2", "myApi_Key"],
    )
    @pytest.mark.parametrize("where", ["keys", "design_keys", "context_keys", "ctx"])
    def test_redacted(self, key: str, where: str) -> None:
        inner = {"width": 1, key: "hunter2", "depth": 2}
        request = {
            "keys": {**inner, "plain": 0},
            "design_keys": {"design": inner},
            "context_keys": {"context": inner},
            "ctx": {"ctx": inner},
        }[where]
        summary = summarize_request(request)
        listed = summary["context_keys" if where == "ctx" else where]
        assert "[redacted]" in listed
        assert key not in listed
        assert "hunter2" not in json.dumps(summary)

    @pytest.mark.parametrize(
        "key", ["api-key", "apikey", "pass_word", "tok_en", "auth", "secre", "keys", "design"]
    )
    def test_not_redacted(self, key: str) -> None:
        assert summarize_request({key: 1})["keys"] == [key]

    def test_order_and_duplicates_kept(self) -> None:
        summary = summarize_request({"a": 1, "token": 2, "b": 3, "secret": 4})
        assert summary["keys"] == ["a", "[redacted]", "b", "[redacted]"]


class TestKeyLists:
    """First 50 keys of the request, of design and of context (else ctx); absent lists omitted."""

    @pytest.mark.parametrize(
        ("count", "expected"), [(0, 0), (1, 1), (49, 49), (50, 50), (51, 50), (500, 50)]
    )
    def test_cut_off_at_50(self, count: int, expected: int) -> None:
        many = {f"k{i:03d}": i for i in range(count)}
        summary = summarize_request({**many, "design": dict(many), "context": dict(many)})
        assert summary["design_keys"] == list(many)[:expected]
        assert summary["context_keys"] == list(many)[:expected]
        assert summary["keys"] == [*list(many), "design", "context"][:50]

    @pytest.mark.parametrize(
        ("request_", "expected"),
        [
            ({}, {"keys": []}),
            ({"a": 1}, {"keys": ["a"]}),
            ({"design": {}}, {"keys": ["design"], "design_keys": []}),
            ({"design": {"w": 1}}, {"keys": ["design"], "design_keys": ["w"]}),
            ({"design": [1]}, {"keys": ["design"]}),
            ({"design": None}, {"keys": ["design"]}),
            ({"context": {"c": 1}}, {"keys": ["context"], "context_keys": ["c"]}),
            ({"ctx": {"x": 1}}, {"keys": ["ctx"], "context_keys": ["x"]}),
            (
                {"context": {"c": 1}, "ctx": {"x": 1}},
                {"keys": ["context", "ctx"], "context_keys": ["c"]},
            ),
            (
                {"context": "nope", "ctx": {"x": 1}},
                {"keys": ["context", "ctx"], "context_keys": ["x"]},
            ),
            (
                {"context": None, "ctx": {"x": 1}},
                {"keys": ["context", "ctx"], "context_keys": ["x"]},
            ),
            ({"context": {}, "ctx": {"x": 1}}, {"keys": ["context", "ctx"], "context_keys": []}),
            ({"context": 3, "ctx": [1]}, {"keys": ["context", "ctx"]}),
            ({"Context": {"c": 1}, "CTX": {"x": 1}}, {"keys": ["Context", "CTX"]}),
        ],
    )
    def test_table(self, request_: dict[str, Any], expected: dict[str, Any]) -> None:
        assert summarize_request(request_) == expected

    def test_nested_keys_are_not_listed(self) -> None:
        summary = summarize_request({"design": {"outer": {"inner": 1}}})
        assert summary["design_keys"] == ["outer"]
        assert "inner" not in json.dumps(summary)


class TestIds:
    """The five ids are kept when strings of at most 128 characters: top level, else context."""

    @pytest.mark.parametrize("field", IDS)
    @pytest.mark.parametrize(
        ("request_", "expected"),
        [
            ({"F": "top"}, "top"),
            ({"F": "top", "context": {"F": "ctx"}}, "top"),
            ({"context": {"F": "from-context"}}, "from-context"),
            ({"ctx": {"F": "from-ctx"}}, "from-ctx"),
            ({"context": {"F": "context"}, "ctx": {"F": "ctx"}}, "context"),
            ({"F": 7, "context": {"F": "fallback"}}, "fallback"),
            ({"F": "x" * 129, "context": {"F": "fallback"}}, "fallback"),
            ({"F": "x" * 128}, "x" * 128),
            ({"F": "é" * 128}, "é" * 128),  # characters, not bytes
            ({"F": "\U0001f600" * 128}, "\U0001f600" * 128),  # code points, not UTF-16 units
            ({"F": ""}, ""),
            ({"F": "x" * 129}, None),
            ({"F": 12}, None),
            ({"F": 1.5}, None),
            ({"F": True}, None),
            ({"F": None}, None),
            ({"F": ["a"]}, None),
            ({"F": {"id": "a"}}, None),
            ({"context": {"F": "x" * 129}}, None),
            ({"context": {"F": 3}}, None),
            ({"design": {"F": "in-design"}}, None),  # only top level and context count
            ({"context": {"nested": {"F": "deep"}}}, None),
            ({"context": "F", "ctx": {"F": "ctx"}}, "ctx"),
        ],
    )
    def test_table(self, field: str, request_: dict[str, Any], expected: str | None) -> None:
        request = json.loads(json.dumps(request_).replace('"F"', json.dumps(field)))
        summary = summarize_request(request)
        if expected is None:
            assert field not in summary
        else:
            assert summary[field] == expected

    def test_no_other_values(self) -> None:
        request = {
            "tool_id": "t1",
            "model_id": "m1",
            "feed_rate": "VALUE-feed",
            "design": {"width": "VALUE-width", "material_id": "VALUE-design"},
            "context": {"machine_id": "cnc", "operator": "VALUE-operator"},
            "notes": "VALUE-notes",
            "other_id": "VALUE-other",
        }
        summary = summarize_request(request)
        assert summary == {
            "keys": ["tool_id", "model_id", "feed_rate", "design", "context", "notes", "other_id"],
            "design_keys": ["width", "material_id"],
            "context_keys": ["machine_id", "operator"],
            "model_id": "m1",
            "tool_id": "t1",
            "machine_id": "cnc",
        }
        assert "VALUE" not in json.dumps(summary)

    def test_input_not_modified(self) -> None:
        request = {"tool_id": "t", "context": {"secret": "s"}}
        before = json.dumps(request)
        summarize_request(request)
        assert json.dumps(request) == before


class TestNonObject:
    """A request that is not a JSON object gives its JSON type and a note, nothing else."""

    @pytest.mark.parametrize(
        ("request_", "json_type"),
        [
            ([], "array"),
            ([{"tool_id": "t", "secret": "s"}], "array"),
            ("tool_id", "string"),
            ("", "string"),
            (0, "number"),
            (-1.5, "number"),
            (2**60, "number"),
            (True, "boolean"),
            (False, "boolean"),
            (None, "null"),
        ],
    )
    def test_type(self, request_: Any, json_type: str) -> None:
        assert summarize_request(request_) == {"type": json_type, "note": "non-object request"}
