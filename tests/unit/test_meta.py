"""The rules of ``patch_meta`` (``worker.core.meta``): every refusal, every outcome."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from worker.core.meta import MAX_META_BYTES, MetaPatchError, apply_meta_patch, check_meta_patch

GUARD = {"violations": ["RISK_LEVEL_RED"], "checked": True}
META: dict[str, Any] = {"guard": GUARD, "ticket": "RMOS-1", "tags": ["a", "b"]}


def sized(length: int) -> dict[str, Any]:
    """A patch whose result, applied to ``{}``, is exactly ``length`` long as it is measured."""
    frame = len(json.dumps({"k": ""}))
    return {"k": "x" * (length - frame)}


class TestRefused:
    """Each patch the rules refuse, with the reason the API replies with."""

    @pytest.mark.parametrize(
        ("meta", "patch", "reason"),
        [
            (META, {}, "meta_updates is empty"),
            (META, {"guard": None}, "meta.guard is the safety guard's and never changes"),
            (META, {"guard": GUARD}, "meta.guard is the safety guard's and never changes"),
            (META, {"guard": {}, "x": 1}, "meta.guard is the safety guard's and never changes"),
            ({}, {"guard": GUARD}, "meta.guard is the safety guard's and never changes"),
            (META, {"x": 2**53}, "meta_updates: integer 9007199254740992 is beyond ±(2**53 - 1)"),
            (META, {"x": -(2**53)}, "meta_updates: integer -9007199254740992 is beyond"),
            (META, {"x": {"deep": [1, 2**60]}}, "meta_updates: integer 1152921504606846976"),
            (META, {"x": float("nan")}, "meta_updates: nan is not JSON"),
            (META, {"x": float("inf")}, "meta_updates: inf is not JSON"),
            (META, {"x": "\ud800"}, "meta_updates: lone surrogate"),
            ({}, sized(MAX_META_BYTES + 1), "meta over 64 KiB"),
            ({"k0": "x" * MAX_META_BYTES}, {"k1": 1}, "meta over 64 KiB"),
        ],
    )
    def test_refused(self, meta: dict[str, Any], patch: dict[str, Any], reason: str) -> None:
        before = copy.deepcopy(meta)
        with pytest.raises(MetaPatchError) as refused:
            apply_meta_patch(meta, patch)
        assert str(refused.value).startswith(reason)
        assert meta == before  # the run's meta is never modified

    @pytest.mark.parametrize(
        ("patch", "reason"),
        [
            ({}, "meta_updates is empty"),
            ({"guard": None}, "meta.guard"),
            ({"x": 2**53}, "meta_updates: integer"),
        ],
    )
    def test_refused_before_the_run_is_read(self, patch: dict[str, Any], reason: str) -> None:
        """``check_meta_patch`` needs no meta: the API refuses these before reading the run."""
        with pytest.raises(MetaPatchError, match=reason):
            check_meta_patch(patch)

    @pytest.mark.parametrize(
        "patch",
        [{"x": 1}, {"x": None}, {"x": {"y": [1.5, None, 2**53 - 1]}}, sized(2 * MAX_META_BYTES)],
    )
    def test_check_passes(self, patch: dict[str, Any]) -> None:
        """The size cap is of the patched meta, not of the patch: not checked without it."""
        check_meta_patch(patch)


class TestApplied:
    """What a patch the rules accept makes of the meta; None when it changes nothing."""

    @pytest.mark.parametrize(
        ("meta", "patch", "expected"),
        [
            ({}, {"ticket": "RMOS-1"}, {"ticket": "RMOS-1"}),
            (META, {"owner": "shop-b"}, {**META, "owner": "shop-b"}),
            (META, {"ticket": "RMOS-2"}, {**META, "ticket": "RMOS-2"}),
            (META, {"ticket": None}, {"guard": GUARD, "tags": ["a", "b"]}),
            (
                META,
                {"ticket": None, "owner": "b"},
                {"guard": GUARD, "tags": ["a", "b"], "owner": "b"},
            ),
            # a nested value is replaced whole, never merged
            ({"cfg": {"a": 1, "b": 2}}, {"cfg": {"a": 3}}, {"cfg": {"a": 3}}),
            ({}, {"cfg": {"deep": [1, {"x": None}]}}, {"cfg": {"deep": [1, {"x": None}]}}),
            ({"cfg": {"a": 1}}, {"cfg": None}, {}),
            # every JSON value with a canonical form
            ({}, {"n": 2**53 - 1, "m": -(2**53 - 1)}, {"n": 2**53 - 1, "m": -(2**53 - 1)}),
            ({}, {"f": 1.5, "g": 1e300, "h": 110.0}, {"f": 1.5, "g": 1e300, "h": 110.0}),
            (
                {},
                {"b": False, "s": "é\U0001f600", "l": []},
                {"b": False, "s": "é\U0001f600", "l": []},
            ),
            # removing an absent key beside a real change
            ({"a": 1}, {"absent": None, "a": 2}, {"a": 2}),
            # the cap: exactly the limit is allowed; so is shrinking meta that is over it
            ({}, sized(MAX_META_BYTES), sized(MAX_META_BYTES)),
            ({"big": "x" * MAX_META_BYTES, "k": 1}, {"big": None}, {"k": 1}),
        ],
    )
    def test_applied(
        self, meta: dict[str, Any], patch: dict[str, Any], expected: dict[str, Any]
    ) -> None:
        before = copy.deepcopy(meta)
        assert apply_meta_patch(meta, patch) == expected
        assert meta == before

    @pytest.mark.parametrize(
        ("meta", "patch"),
        [
            (META, {"ticket": "RMOS-1"}),  # sets what is there
            (META, {"absent": None}),  # removes what is absent
            ({}, {"absent": None}),
            (META, {"ticket": "RMOS-1", "tags": ["a", "b"], "gone": None}),
            ({"big": "x" * MAX_META_BYTES}, {"big": "x" * MAX_META_BYTES}),  # never measured
            ({"n": 1}, {"n": 1.0}),  # equal in JSON, as in Python
        ],
    )
    def test_nothing_changes(self, meta: dict[str, Any], patch: dict[str, Any]) -> None:
        """No change, no new revision: None."""
        assert apply_meta_patch(meta, patch) is None

    def test_the_limit_is_measured_as_json_dumps_writes(self) -> None:
        """ASCII with default separators: a non-ASCII character counts as its escape."""
        patch = {"k": "é" * ((MAX_META_BYTES - len(json.dumps({"k": ""}))) // 6)}
        assert len(json.dumps(patch)) <= MAX_META_BYTES
        assert apply_meta_patch({}, patch) == patch
        with pytest.raises(MetaPatchError, match="meta over 64 KiB"):
            apply_meta_patch({}, {"k": patch["k"] + "é"})
