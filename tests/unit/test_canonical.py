"""Canonical JSON, strict parsing and hashes (CONTRACT section 1, run id of section 2)."""

from __future__ import annotations

import hashlib
import json
import re
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Any

import orjson
import pytest
import rfc8785
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from contracts.canonical import (
    MAX_DEPTH,
    MAX_SAFE_INTEGER,
    CanonicalError,
    InvalidJsonError,
    NonCanonicalValueError,
    _fast_path_safe,
    canonical,
    derive_run_id,
    normalize,
    parse_json,
    plain_canonical,
    sha256_file,
    sha256_hex,
    sha256_json,
    sha256_json_or_none,
    sha256_text,
    sha256_text_or_none,
)


def legacy_dumps(value: Any) -> bytes:
    """The form the original RMOS store wrote (CONTRACT section 1)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# --------------------------------------------------------------------------------- strategies

TRICKY_CHARS = [
    "\x00", "\x07", "\b", "\t", "\n", "\f", "\r", "\x1f", "\x7f", '"', "\\", "/", "é",
    "\u2028", "\ud7ff", "\ue000", "\ufeff", "\uffff", "\U00010000", "\U0001f600", "\U0010ffff",
]  # fmt: skip
SPECIAL_FLOATS = [
    0.0, -0.0, 1.0, -1.0, 1e-4, 9.999999999999999e-05, 1e-5, 1e-6, 1e-7, 1.5e-7, 5e-324,
    2.2250738585072014e-308, 1e15, 1e16, 1e20, 1e21, 1e22, 1.7976931348623157e308,
    123456789012345.6, 0.1, 91.5, 2.0**53, 2.0**53 + 2, 4.35, 0.000123,
]  # fmt: skip

texts = st.text(st.one_of(st.characters(codec="utf-8"), st.sampled_from(TRICKY_CHARS)), max_size=8)
# Few distinct characters, so that keys share prefixes and the UTF-16 sort order is exercised.
sort_keys = st.text(st.sampled_from(["a", "é", "\ue000", "\uffff", "\U00010000", "\U0001f600"]))
keys = st.one_of(texts, sort_keys)
floats = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(SPECIAL_FLOATS),
    st.integers(-(2**60), 2**60).map(float),  # integral floats
    st.floats(min_value=-1e-3, max_value=1e-3),  # tiny, with exponents in Python
)
safe_ints = st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER)
scalars = st.one_of(st.none(), st.booleans(), safe_ints, floats, texts)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(keys, inner, max_size=6)),
    max_leaves=40,
)

# What section 1 says json.dumps agrees on: ints within 2**53, non-integral floats of magnitude
# >= 1e-4, keys in the BMP (string values may be anything).
legacy_floats = st.floats(min_value=1e-4, max_value=1e15).filter(lambda f: not f.is_integer())
legacy_scalars = st.one_of(
    st.none(),
    st.booleans(),
    safe_ints,
    legacy_floats,
    legacy_floats.map(lambda f: -f),
    texts,
)
bmp_keys = st.text(
    st.one_of(
        st.characters(codec="utf-8", max_codepoint=0xFFFF), st.sampled_from(TRICKY_CHARS[:18])
    )
)
legacy_values = st.recursive(
    legacy_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(bmp_keys, inner, max_size=6)
    ),
    max_leaves=40,
)

ARTIFACT: dict[str, Any] = {
    "schema": "rmos.run_artifact.v1",
    "run_id": "run_467d95e1bee1f48fc5dfa0a6a422cd7d",
    "revision": 1,
    "status": "OK",
    "decision": {"risk_level": "GREEN", "score": 91.5, "warnings": ["feed near limit"]},
    "hashes": {"feasibility_sha256": "a" * 64, "event_sha256": "b" * 64},
    "attachments": [{"sha256": "c" * 64, "kind": "gcode", "size_bytes": 48213}],
    "meta": {"guard": None, "tags": ["é", "\U0001f600"], "ok": True, "feed": 1200.25},
}


def _has_unsafe_integral_float(value: Any) -> bool:
    """True for floats that JCS writes as an integer literal beyond 2**53 (e.g. 1e20)."""
    if isinstance(value, float):
        return value.is_integer() and MAX_SAFE_INTEGER < abs(value) < 1e21
    if isinstance(value, dict):
        value = list(value.values())
    return isinstance(value, list) and any(_has_unsafe_integral_float(v) for v in value)


# ------------------------------------------------------------------------------------- tests


class TestGoldenVectors:
    """The golden vectors of CONTRACT section 1, from input text to canonical bytes to hash."""

    @pytest.mark.parametrize(
        ("text", "expected_canonical", "expected_sha256"),
        [
            (
                r'{"b":2,"a":1}',
                r'{"a":1,"b":2}',
                "43258cff783fe7036d8a43033f830adfc60ec037382473548ac742b888292777",
            ),
            (
                r'{"score":91.5,"whole":1.0,"tiny":1e-05,"big":1e+21,"neg":-0.0}',
                r'{"big":1e+21,"neg":0,"score":91.5,"tiny":0.00001,"whole":1}',
                "a8a0d781ebe62bb9bb7099bcf125d9cfcc244c301f44025e3e2b91cb9bd1c7c3",
            ),
            (
                r'{"kéy":"café ✓","Z":[true,null,"\u0007"]}',
                r'{"Z":[true,null,"\u0007"],"kéy":"café ✓"}',
                "bbbf2b4f43fbcfce583866fdea1cd2fd36ad9252d88e25ef02cebe03789892dc",
            ),
        ],
    )
    def test_vector(self, text: str, expected_canonical: str, expected_sha256: str) -> None:
        value = parse_json(text.encode("utf-8"))
        assert canonical(value) == expected_canonical.encode("utf-8")
        assert sha256_json(value) == expected_sha256
        assert sha256_hex(canonical(value)) == expected_sha256
        assert parse_json(text) == value  # str input parses the same

    def test_derived_run_id(self) -> None:
        assert derive_run_id("engine-a", "evt-0001") == "run_467d95e1bee1f48fc5dfa0a6a422cd7d"

    def test_derived_run_id_is_over_the_raw_string(self) -> None:
        run_id = derive_run_id("engine-b", "evt:ü")
        assert re.fullmatch(r"run_[0-9a-f]{32}", run_id)
        raw = hashlib.sha256("engine-b\nevt:ü".encode()).hexdigest()
        assert run_id == "run_" + raw[:32]
        assert derive_run_id("engine-b", "evt:u") != run_id


class TestFastPath:
    """canonical() always equals rfc8785, and takes the json.dumps path only where that is exact."""

    @settings(max_examples=400)
    @given(json_values)
    @example({"\U0001f600": 1, "\ue000": 2})  # UTF-16 order differs from code point order
    @example({"a": [1.0, -0.0, 1e-7, 1e21, 5e-324]})
    @example(['\x00\x1f\x7f\u2028\b\f\n\r\t"\\'])
    def test_canonical_equals_rfc8785(self, value: Any) -> None:
        assert canonical(value) == rfc8785.dumps(value)

    @settings(max_examples=400)
    @given(json_values)
    @example({"\U0001f600": 1, "\ue000": 2})
    @example(1.0)
    @example(-0.0)
    @example(9.999999999999999e-05)
    def test_walk_says_fast_only_when_json_dumps_is_exact(self, value: Any) -> None:
        if _fast_path_safe(value):
            assert legacy_dumps(value) == rfc8785.dumps(value)

    @given(json_values)
    def test_round_trip(self, value: Any) -> None:
        assume(not _has_unsafe_integral_float(value))
        once = canonical(value)
        assert parse_json(once) == value
        assert canonical(parse_json(once)) == once

    @pytest.mark.parametrize("number", [2.0**53, 1e20, -1e20])
    def test_integral_float_beyond_2_53_reads_back_as_a_big_int(self, number: float) -> None:
        once = canonical(number)
        assert once == str(int(number)).encode()
        with pytest.raises(NonCanonicalValueError):
            canonical(parse_json(once))

    @pytest.mark.parametrize(
        ("value", "fast"),
        [
            (ARTIFACT, True),
            ({"a": 1e-4, "b": -0.5, "c": 123456789012345.6}, True),
            ({"a": True, "b": False, "c": None, "d": MAX_SAFE_INTEGER}, True),
            ({"\uffff": "\U0001f600"}, True),  # non-BMP values are fine, only keys matter
            ({"a": 1.0}, True),  # integral floats are written as the ints they equal
            ({"a": [-0.0]}, True),
            ([{"x": 1}, 2.0], True),
            ({"a": 2.0**53}, False),  # beyond 2**53 an integral float stays a float
            ({"a": [[9.999999999999999e-05]]}, False),
            ({"a": {"\U0001f600": 1}}, False),
        ],
    )
    def test_path_choice(self, value: Any, fast: bool, monkeypatch: pytest.MonkeyPatch) -> None:
        calls: list[Any] = []
        real_dumps = rfc8785.dumps

        def spy(obj: Any) -> bytes:
            calls.append(obj)
            return real_dumps(obj)

        expected = real_dumps(value)
        monkeypatch.setattr(rfc8785, "dumps", spy)
        assert canonical(value) == expected
        assert bool(calls) is not fast

    def test_subclasses_of_json_types(self) -> None:
        class Color(StrEnum):
            RED = "RED"

        class Level(IntEnum):
            HIGH = 3

        value = {Color.RED: [Level.HIGH, Color.RED], "t": (1, 2.5), "w": (1.0,)}
        assert canonical(value) == b'{"RED":[3,"RED"],"t":[1,2.5],"w":[1]}'

    @settings(max_examples=400)
    @given(json_values)
    def test_orjson_writes_what_json_dumps_writes(self, value: Any) -> None:
        """The fast path's orjson bytes are the json.dumps bytes the walk vouches for."""
        if _fast_path_safe(value):
            assert orjson.dumps(value, option=orjson.OPT_SORT_KEYS) == legacy_dumps(value)

    def test_a_type_orjson_does_not_write_goes_through_json_dumps(self) -> None:
        class Measure(float):
            pass

        value = {"depth": Measure(1.25), "n": [Measure(0.5)]}
        assert (
            canonical(value)
            == b'{"depth":1.25,"n":[0.5]}'
            == rfc8785.dumps({"depth": 1.25, "n": [0.5]})
        )


# What a worker adds to what it normalized: its own strings, safe ints, bools and None under
# ASCII keys.
worker_made = st.dictionaries(
    st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12),
    st.one_of(st.none(), st.booleans(), safe_ints, texts, st.lists(texts, max_size=3)),
    max_size=6,
)


class TestNormalize:
    """``canonical`` in two steps, and what is built from plain parts encoded without a walk."""

    @settings(max_examples=400)
    @given(json_values)
    @example({"a": [1.0, -0.0, 2.0**53]})
    @example({"\U0001f600": 1.0})
    def test_the_two_steps_are_canonical(self, value: Any) -> None:
        normal, plain = normalize(value)
        assert normal == value  # integral floats turned into the ints they equal, nothing else
        assert plain is _fast_path_safe(normal)
        if plain:
            assert plain_canonical(normal) == rfc8785.dumps(value)

    @settings(max_examples=400)
    @given(st.lists(json_values, min_size=1, max_size=4), worker_made)
    def test_built_from_plain_parts(self, parts: list[Any], made: dict[str, Any]) -> None:
        """Every part of a plain value is plain, and so is what joins plain parts with values a
        worker makes: that is what the intake relies on to encode an artifact without a walk."""
        normals = [normalize(part) for part in parts]
        assume(all(plain for _, plain in normals))
        values = [normal for normal, _ in normals]
        built = {**made, "parts": values, "first": values[0], "nested": {"v": values[-1:]}}
        assert plain_canonical(built) == rfc8785.dumps(built)
        for value in values:
            for part in value.values() if isinstance(value, dict) else [value]:
                assert plain_canonical(part) == rfc8785.dumps(part)

    def test_a_value_that_is_not_plain_is_the_callers_to_route(self) -> None:
        normal, plain = normalize({"\U0001f600": 1, "\ue000": 2.0})
        assert normal == {"\U0001f600": 1, "\ue000": 2}
        assert not plain
        assert plain_canonical(normal) != canonical(normal) == rfc8785.dumps(normal)


class TestLegacyCompatibility:
    """CONTRACT section 1: for safe ints, floats >= 1e-4 and BMP keys, canonical is json.dumps."""

    @settings(max_examples=300)
    @given(legacy_values)
    @example({"z": 0.0001, "a": -1234.5678, "é": ["\x07", "\U0001f600"], "\ue000": 2**53 - 1})
    def test_same_bytes_as_json_dumps(self, value: Any) -> None:
        assert canonical(value) == legacy_dumps(value)
        assert _fast_path_safe(value)

    @pytest.mark.parametrize("value", [1.0, -0.0, 1e-5, {"\U0001f600": 0, "\uffff": 1}])
    def test_outside_the_claim_they_differ(self, value: Any) -> None:
        assert canonical(value) != legacy_dumps(value)


class TestCanonicalRejects:
    """Values with no canonical form raise, on both paths, with the contract's error kind."""

    @pytest.mark.parametrize("number", [2**53, -(2**53), 10**30, -(10**400)])
    @pytest.mark.parametrize(
        "wrap",
        [
            lambda n: n,
            lambda n: [1, n],
            lambda n: {"a": {"b": n}},
            lambda n: {"slow": 1.0, "deep": [n]},  # fallback path
            lambda n: {"\U0001f600": [n]},  # fallback path
        ],
    )
    def test_big_integers(self, number: int, wrap: Any) -> None:
        with pytest.raises(NonCanonicalValueError):
            canonical(wrap(number))
        with pytest.raises(NonCanonicalValueError):
            sha256_json(wrap(number))

    @pytest.mark.parametrize("number", [MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER, 0])
    def test_safe_integer_bounds(self, number: int) -> None:
        assert canonical([number, 1.0]) == f"[{number},1]".encode()
        assert canonical([number]) == f"[{number}]".encode()

    def test_booleans_are_not_integers(self) -> None:
        assert canonical([True, False, 1, 0]) == b"[true,false,1,0]"
        assert canonical({"a": True, "b": 1.0}) == b'{"a":true,"b":1}'

    @pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
    @pytest.mark.parametrize("wrap", [lambda x: x, lambda x: {"a": [x]}, lambda x: [1.0, x]])
    def test_nan_and_infinity(self, bad: float, wrap: Any) -> None:
        with pytest.raises(InvalidJsonError):
            canonical(wrap(bad))

    @pytest.mark.parametrize(
        "value",
        ["\ud800", {"\udc00": 1}, ["ok", "a\udfffb"], {"a": "\ud83d", "b": 1.0}, {"\ud800": 1.0}],
    )
    def test_lone_surrogates(self, value: Any) -> None:
        with pytest.raises(InvalidJsonError):
            canonical(value)

    @pytest.mark.parametrize("value", [{1: "a"}, {"a": {1, 2}}, [b"bytes"], object()])
    def test_non_json_types(self, value: Any) -> None:
        with pytest.raises(TypeError):
            canonical(value)

    def test_error_hierarchy(self) -> None:
        assert issubclass(InvalidJsonError, CanonicalError)
        assert issubclass(NonCanonicalValueError, CanonicalError)
        assert issubclass(CanonicalError, ValueError)
        assert not issubclass(InvalidJsonError, NonCanonicalValueError)


class TestParseJson:
    """parse_json is strict: what is not JSON in the contract's sense raises InvalidJsonError."""

    @pytest.mark.parametrize(
        "body",
        [
            b"NaN",
            b"[NaN]",
            b'{"a":Infinity}',
            b"-Infinity",
            b"1e400",
            b"[-1e400]",
            b'"\\ud800"',
            b'{"\\udc00":1}',
            b'{"a":{"\\uD83D":1}}',
            b'["ok","\\ud83d"]',
            b'"\\ude00\\ud83d"',  # a pair in the wrong order
            b'"\xff"',
            b'"\xed\xa0\x80"',  # a surrogate encoded as UTF-8 (CESU)
            b'"\xc0\xaf"',  # overlong
            b"\xef\xbb\xbf{}",  # BOM
            "{}".encode("utf-16"),
            b"",
            b"   ",
            b"{",
            b"{'a':1}",
            b"[1,]",
            b"01",
            b"{} x",
            b'{"a":1}{"b":2}',
            b'"tab\tinside"',
            b"[" * 100_000 + b"]" * 100_000,
            b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        ],
    )
    def test_rejected(self, body: bytes) -> None:
        with pytest.raises(InvalidJsonError):
            parse_json(body)

    @pytest.mark.parametrize("text", ['"\ud800"', '{"\udfff": 1}', "NaN", "[1,"])
    def test_rejected_str_input(self, text: str) -> None:
        with pytest.raises(InvalidJsonError):
            parse_json(text)

    @pytest.mark.parametrize(
        ("body", "expected"),
        [
            (b'"\\ud83d\\ude00"', "\U0001f600"),
            ('"\U0001f600"'.encode(), "\U0001f600"),
            (b'"\\\\ud800"', "\\ud800"),  # an escaped backslash, not a surrogate escape
            (b' {"a" : [1, 2.5, 1e-7, null, true]} \n', {"a": [1, 2.5, 1e-7, None, True]}),
            (b"9007199254740993", 9007199254740993),  # big ints are canonical()'s business
            (b"-0", 0),
            (b'"\\u0000\\u007f"', "\x00\x7f"),
        ],
    )
    def test_accepted(self, body: bytes, expected: Any) -> None:
        assert parse_json(body) == expected

    @pytest.mark.parametrize(
        ("opening", "leaf", "closing"),
        [
            (b"[", b"", b"]"),
            (b"[", b"1.0", b"]"),
            (b'{"a":', b"1", b"}"),
            (b'{"\\ud83d\\ude00":', b"-0.0", b"}"),
        ],
    )
    def test_nesting_depth(self, opening: bytes, leaf: bytes, closing: bytes) -> None:
        deepest = opening * MAX_DEPTH + leaf + closing * MAX_DEPTH
        value = parse_json(deepest)
        assert canonical(value) == rfc8785.dumps(value)
        assert canonical([value]) == b"[" + rfc8785.dumps(value) + b"]"  # canonical has no limit
        too_deep = opening * (MAX_DEPTH + 1) + leaf + closing * (MAX_DEPTH + 1)
        with pytest.raises(InvalidJsonError, match="nesting"):
            parse_json(too_deep)

    def test_depth_counts_the_deepest_branch(self) -> None:
        wide = b'{"a":[1,[2]],"b":' + b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1) + b"}"
        assert parse_json(wide)["a"] == [1, [2]]
        with pytest.raises(InvalidJsonError):
            parse_json(b'{"a":[1,[2]],"b":' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"}")

    def test_big_int_is_parsed_then_refused_by_canonical(self) -> None:
        value = parse_json(b'{"n": 9007199254740992}')
        assert value == {"n": 2**53}
        with pytest.raises(NonCanonicalValueError):
            canonical(value)

    def test_integer_literal_too_long_for_python(self) -> None:
        digits = b"1" * 5000
        with pytest.raises(NonCanonicalValueError):
            parse_json(b'{"n": [' + digits + b"]}")
        # ... but the contract's order holds: not JSON at all wins over no canonical form.
        with pytest.raises(InvalidJsonError):
            parse_json(b"[" + digits + b", oops]")
        with pytest.raises(InvalidJsonError):
            parse_json(b"[" + digits + b', "\\ud800"]')


def _strict(body: bytes) -> Any:
    """What parse_json's strict parser (``json.JSONDecoder``, the one str input takes) makes
    of ``body``."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidJsonError("invalid UTF-8") from None
    return parse_json(text)


def _outcome(parse: Any, body: bytes) -> tuple[str, ...]:
    """The value parsed (its repr tells 1 from 1.0 and 0.0 from -0.0), or the error's class."""
    try:
        return ("value", repr(parse(body)))
    except CanonicalError as exc:
        return (type(exc).__name__,)


MUTATIONS = ["", " ", ",", ":", "[", "]", "{", "}", '"', "\\", "\\u", "\\ud800", "0", "-", ".",
             "e", "1e400", "NaN", "\x00", "\x7f", "\ufeff", "\udcff"]  # fmt: skip


@st.composite
def mutated_texts(draw: st.DrawFn) -> bytes:
    """A JSON text with one splice of JSON-significant characters, often no longer JSON."""
    text = json.dumps(draw(json_values), ensure_ascii=draw(st.booleans()))
    at = draw(st.integers(0, len(text)))
    cut = draw(st.integers(0, min(3, len(text) - at)))
    splice = draw(st.sampled_from(MUTATIONS))
    return (text[:at] + splice + text[at + cut :]).encode("utf-8", "surrogatepass")


class TestBytesParseIsTheStrictParse:
    """Bytes are parsed by orjson, four times sooner; what it refuses, and texts with an
    integer beyond 64 bits (which it would make a float), go through the strict parser, so the
    value and the error class are the strict parser's in every case."""

    @settings(max_examples=400)
    @given(
        st.recursive(
            st.one_of(scalars, st.integers()),  # any size: beyond 2**64 too
            lambda inner: st.one_of(
                st.lists(inner, max_size=5), st.dictionaries(keys, inner, max_size=6)
            ),
            max_leaves=40,
        ),
        st.booleans(),
    )
    @example(2**64, True)
    @example([-(2**63) - 1, 1.0, -0.0], True)
    def test_json_texts(self, value: Any, ascii_only: bool) -> None:
        body = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
        assert _outcome(parse_json, body) == _outcome(_strict, body)

    @settings(max_examples=600)
    @given(st.one_of(mutated_texts(), st.binary(max_size=40)))
    @example(b"[1e400]")
    @example(b"\xef\xbb\xbf[]")
    @example(b'"\\ud800"')
    def test_any_bytes(self, body: bytes) -> None:
        assert _outcome(parse_json, body) == _outcome(_strict, body)

    def test_a_long_digit_run_in_a_string_is_no_integer(self) -> None:
        body = b'{"id": "x1234567890123456789012", "n": 18446744073709551616}'
        assert parse_json(body) == {"id": "x1234567890123456789012", "n": 2**64}


class TestHashes:
    """The hash helpers are plain SHA-256 over the right bytes; the _or_none ones pass None."""

    def test_sha256_hex(self) -> None:
        empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        assert sha256_hex(b"") == empty
        assert sha256_text("") == empty

    def test_sha256_text_is_utf8(self) -> None:
        assert sha256_text("café ✓") == hashlib.sha256("café ✓".encode()).hexdigest()

    def test_sha256_json_is_over_canonical(self) -> None:
        assert sha256_json({"b": 1.0, "a": "x"}) == sha256_hex(b'{"a":"x","b":1}')
        assert sha256_json(None) == sha256_hex(b"null")

    def test_or_none(self) -> None:
        assert sha256_json_or_none(None) is None
        assert sha256_text_or_none(None) is None
        assert sha256_json_or_none([1]) == sha256_json([1])
        assert sha256_text_or_none("x") == sha256_text("x")

    @pytest.mark.parametrize("size", [0, 1, (1 << 20) - 1, 1 << 20, (5 << 19) + 7])
    def test_sha256_file(self, tmp_path: Path, size: int) -> None:
        data = bytes(range(256)) * (size // 256) + bytes(size % 256)
        path = tmp_path / "blob.bin"
        path.write_bytes(data)
        assert sha256_file(path) == hashlib.sha256(data).hexdigest()
        assert sha256_file(str(path)) == sha256_hex(data)
