"""Canonical JSON (RFC 8785 / JCS), strict parsing and the hashes of CONTRACT section 1.

Fast path: ``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` writes JCS
bytes (same escapes, same shortest round-trip digits) unless a float is integral or -0.0, a float
is below 1e-4 in magnitude (Python writes an exponent there; non-integral floats are all < 2**53),
or a key lies outside the BMP (JCS sorts by UTF-16 code units). One cheap walk looks for those and
rejects big ints, NaN and Infinity. Integral floats (the common case: ``110.0``) are then written
as the ints they equal, which JCS prints alike; only what is left goes through ``rfc8785``.
``orjson.dumps(option=OPT_SORT_KEYS)`` writes the same bytes as that ``json.dumps`` ten times
sooner, so the fast path uses it (the golden vectors and a property test against ``rfc8785``
hold both to JCS).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterable
from typing import Any, Final

import orjson
import rfc8785

__all__ = [
    "MAX_DEPTH",
    "MAX_SAFE_INTEGER",
    "CanonicalError",
    "InvalidJsonError",
    "NonCanonicalValueError",
    "canonical",
    "derive_run_id",
    "normalize",
    "parse_json",
    "plain_canonical",
    "sha256_file",
    "sha256_hex",
    "sha256_json",
    "sha256_json_or_none",
    "sha256_text",
    "sha256_text_or_none",
]

MAX_SAFE_INTEGER: Final = 2**53 - 1
_MIN_SAFE_INTEGER: Final = -MAX_SAFE_INTEGER
# Python's repr switches to exponent notation below 1e-4 (ECMAScript only below 1e-6) and at 1e16
# (ECMAScript at 1e21); non-integral floats are all below 2**53 < 1e16, so only the bottom matters.
_MIN_PLAIN_FLOAT: Final = 1e-4
_MAX_PLAIN_FLOAT: Final = 1e16
# Deepest nesting of arrays and objects parse_json accepts (serde_json's default too). Python's
# own limit would depend on the caller's stack depth, and rfc8785 recurses once per level.
MAX_DEPTH: Final = 128
_MAX_BMP: Final = "\uffff"
_CHUNK: Final = 1 << 20
# orjson.loads turns an integer literal beyond 64 bits into a float: such texts (19 digits or
# more in a row, also inside strings) take the strict parser, which keeps the integer. Found by
# mapping each digit to "0" and anything else to " " (two C calls, 1 µs; a regex takes 9).
_DIGITS_AS_ZEROS: Final = bytes(48 if 48 <= b <= 57 else 32 for b in range(256))
_LONG_DIGITS: Final = b"0" * 19
# A JSON escape that decodes to a UTF-16 surrogate; only then can a parsed string hold a lone one.
_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F]")

# Measured with timeit on CPython 3.11, 1.4 KB artifact-like dict (25 top-level keys, nested
# decision/hashes/outputs/meta, 2 non-integral floats, 1 attachment): fast path = walk 5.5 µs +
# json.dumps 14 µs ≈ 20 µs; rfc8785.dumps alone 80 µs, so the fallback (one 1.0 added) ≈ 90-100 µs.
# parse_json (UTF-8 decode, depth and surrogate checks) 11 µs against json.loads 8.5 µs.


class CanonicalError(ValueError):
    """A value or a body that has no canonical JSON form."""


class InvalidJsonError(CanonicalError):
    """Not JSON in the contract's sense (CONTRACT code ``INVALID_JSON``).

    Bad syntax, invalid UTF-8, NaN/Infinity (or a number literal overflowing to it), lone
    surrogates, nesting too deep for the parser.
    """


class NonCanonicalValueError(CanonicalError):
    """Valid JSON with no canonical form: an integer beyond ±(2**53 - 1).

    The contract calls this ``SCHEMA_VIOLATION``; the caller maps it.
    """


# --------------------------------------------------------------------------------------- parsing


def _reject_constant(name: str) -> Any:
    raise InvalidJsonError(f"{name} is not JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise InvalidJsonError(f"number {text[:40]} overflows a double")
    return value


def _placeholder_int(text: str) -> int:
    # Only used to finish the syntax check once an integer literal was too long to convert.
    try:
        return int(text)
    except ValueError:
        return 0


def _check_depth(brackets: int, value: Any) -> None:
    """Raise InvalidJsonError when ``value`` (parsed from a text with ``brackets`` opening
    brackets) nests arrays and objects deeper than MAX_DEPTH."""
    if brackets <= MAX_DEPTH:
        return  # cannot nest deeper than it has brackets: the common case, two C calls
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if type(item) is dict else item
        if depth == MAX_DEPTH:
            if any(type(child) is dict or type(child) is list for child in children):
                raise InvalidJsonError(f"nesting deeper than {MAX_DEPTH}")
            continue
        stack.extend(
            (child, depth + 1) for child in children if type(child) is dict or type(child) is list
        )


def _check_surrogates(text: str, value: Any) -> None:
    """Raise InvalidJsonError when a string or key parsed from ``text`` holds a lone surrogate."""
    if "\\u" not in text or not _SURROGATE_ESCAPE.search(text):
        return  # only a \uD800-\uDFFF escape can produce one (raw ones are not valid UTF-8)
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            _encode_utf8(item)
        elif isinstance(item, dict):
            for key, child in item.items():
                _encode_utf8(key)
                stack.append(child)
        elif isinstance(item, list):
            stack.extend(item)


def _encode_utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidJsonError(f"lone surrogate at index {exc.start}") from None


# Built once: json.loads with any keyword builds a new decoder per call (+2 µs on 1 KB).
_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_parse_float)
_LENIENT_INT_DECODER: Final = json.JSONDecoder(
    parse_constant=_reject_constant, parse_float=_parse_float, parse_int=_placeholder_int
)


def _loads(text: str, decoder: json.JSONDecoder = _DECODER) -> Any:
    try:
        return decoder.decode(text)
    except json.JSONDecodeError as exc:
        raise InvalidJsonError(str(exc)) from None
    except RecursionError:
        raise InvalidJsonError("nesting too deep") from None


def parse_json(data: bytes | str) -> Any:
    """Parse a JSON text strictly.

    Raises InvalidJsonError for anything that is not JSON in the contract's sense, including a
    UTF-8 BOM, non-UTF-8 bytes and arrays/objects nested deeper than MAX_DEPTH. Integers beyond
    ±(2**53 - 1) are returned as they are, so that ``canonical()`` can report them as
    NonCanonicalValueError; the one exception is an integer literal longer than Python converts
    (``sys.get_int_max_str_digits()``, 4300 digits), for which parse_json itself raises
    NonCanonicalValueError once the rest of the text is known to be JSON.

    Bytes are parsed by orjson (2 µs against 8 for a 1.1 KB event); whatever it refuses, and a
    text with 19 digits in a row, goes through ``json``'s strict decoder, which str input takes:
    values and error classes are the same either way (a property test holds them to it).
    """
    if isinstance(data, str):
        text = data
        if not text.isascii():
            _encode_utf8(text)  # a raw lone surrogate in a str body
    else:
        data = bytes(data)
        if _LONG_DIGITS not in data.translate(_DIGITS_AS_ZEROS):
            try:
                value = orjson.loads(data)
            except orjson.JSONDecodeError:
                pass  # the strict parser below says why, in the contract's words
            else:
                if type(value) is dict or type(value) is list:
                    _check_depth(data.count(b"[") + data.count(b"{"), value)
                return value
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidJsonError(f"invalid UTF-8 at byte {exc.start}") from None
    try:
        value = _loads(text)
    except InvalidJsonError:
        raise
    except ValueError:  # int too long to convert: the only other ValueError json.loads raises
        _check_parsed(text, _loads(text, _LENIENT_INT_DECODER))
        raise NonCanonicalValueError(
            "an integer literal is too long to convert, beyond ±(2**53 - 1)"
        ) from None
    _check_parsed(text, value)
    return value


def _check_parsed(text: str, value: Any) -> None:
    if type(value) is dict or type(value) is list:
        _check_depth(text.count("[") + text.count("{"), value)
        _check_surrogates(text, value)
    elif type(value) is str:
        _check_surrogates(text, value)


# ------------------------------------------------------------------------------ canonicalization


def _float_fast(value: float) -> bool:
    if _MIN_PLAIN_FLOAT <= abs(value) < _MAX_PLAIN_FLOAT and not value.is_integer():
        return True
    if math.isnan(value) or math.isinf(value):
        raise InvalidJsonError(f"{value} is not JSON")
    return False


def _int_fast(value: int) -> bool:
    if _MIN_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        return True
    raise NonCanonicalValueError(f"integer {value} is beyond ±(2**53 - 1)")


def _keys_fast(value: dict[Any, Any]) -> bool:
    try:
        keys = "".join(value)  # one C call instead of a check per key
    except TypeError:
        bad = next(k for k in value if not isinstance(k, str))
        raise TypeError(f"object keys must be strings, not {type(bad).__name__}") from None
    return keys.isascii() or max(keys) <= _MAX_BMP


def _other_fast(value: Any) -> bool:
    """Subclasses of the JSON types (enums, tuples, ...): same rules, slower dispatch."""
    if isinstance(value, str | bool):
        return True
    if isinstance(value, int):
        return _int_fast(int(value))
    if isinstance(value, float):
        return _float_fast(float(value))
    if isinstance(value, dict | list | tuple):
        return _fast_path_safe(dict(value) if isinstance(value, dict) else list(value))
    raise TypeError(f"{type(value).__name__} is not a JSON type")


def _fast_path_safe(value: Any) -> bool:
    """True when json.dumps writes ``value`` exactly as JCS does.

    Walks the whole value (no short cut) and raises for what neither path can write: an integer
    beyond ±(2**53 - 1) (NonCanonicalValueError), NaN or Infinity (InvalidJsonError), a non-JSON
    type or a non-string key (TypeError). Lone surrogates are caught when encoding.
    """
    kind = type(value)
    if kind is dict:
        return _items_fast(value.values(), _keys_fast(value))
    if kind is list:
        return _items_fast(value, True)
    if kind is str or value is None or kind is bool:
        return True
    if kind is int:
        return _int_fast(value)
    if kind is float:
        return _float_fast(value)
    return _other_fast(value)


def _items_fast(items: Iterable[Any], ok: bool) -> bool:
    # Strings, ints, null and bools are checked inline: a call per item would double the cost.
    for item in items:
        kind = type(item)
        if kind is str or item is None or kind is bool:
            continue
        if kind is int:
            if not _MIN_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                _int_fast(item)
        elif not _fast_path_safe(item):
            ok = False
    return ok


def canonical(value: Any) -> bytes:
    """RFC 8785 canonical JSON of ``value`` as UTF-8 bytes.

    Raises NonCanonicalValueError for integers beyond ±(2**53 - 1), InvalidJsonError for NaN,
    Infinity, lone surrogates and nesting too deep, TypeError for values that are not JSON types.
    """
    value, plain = normalize(value)
    try:
        return plain_canonical(value) if plain else _slow(value)
    except RecursionError:
        raise InvalidJsonError("nesting too deep") from None


def normalize(value: Any) -> tuple[Any, bool]:
    """``value`` with its integral floats as the ints they equal when that makes it *plain*, and
    whether it is: then ``plain_canonical`` writes its JCS bytes, and those of any part of it.

    One walk (two when floats were turned). A value built from plain parts and from strings,
    bools, None, safe ints and lists and objects with keys in the BMP is plain as well, so that
    whoever normalized a document once may encode what they build from it without a walk.
    Raises as ``canonical`` does.
    """
    try:
        if _fast_path_safe(value):
            return value, True
        # Most often only integral floats (110.0): as ints, json.dumps writes JCS.
        value = _integral_floats_as_ints(value)
        return value, _fast_path_safe(value)
    except RecursionError:
        raise InvalidJsonError("nesting too deep") from None


def plain_canonical(value: Any) -> bytes:
    """JCS bytes of a plain value (see ``normalize``), without a walk: orjson (sorted keys,
    shortest round-trip floats, the same escapes) writes the bytes json.dumps would, ~10 times
    sooner; a type it does not write (a float subclass) goes through json.dumps. For a value
    that is not plain the bytes may differ from ``canonical``'s."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as exc:
        if "surrogates" in str(exc):
            raise InvalidJsonError("lone surrogate in a string") from None
    text = json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return _encode_utf8(text)


def _integral_floats_as_ints(value: Any) -> Any:
    """A copy with every integral float within ±(2**53 - 1) (and -0.0) turned into an int."""
    kind = type(value)
    if kind is float:
        return int(value) if value.is_integer() and abs(value) <= MAX_SAFE_INTEGER else value
    if kind is dict:
        return {k: _integral_floats_as_ints(v) for k, v in value.items()}
    if kind is list:
        return [_integral_floats_as_ints(v) for v in value]
    return value


def _slow(value: Any) -> bytes:
    try:
        out: bytes = rfc8785.dumps(value)
    except rfc8785.IntegerDomainError as exc:  # pragma: no cover - the walk raises first
        raise NonCanonicalValueError(str(exc)) from None
    except rfc8785.FloatDomainError as exc:  # pragma: no cover - the walk raises first
        raise InvalidJsonError(str(exc)) from None
    except rfc8785.CanonicalizationError as exc:
        if isinstance(exc.__cause__, UnicodeEncodeError):
            raise InvalidJsonError("lone surrogate in a string") from None
        raise TypeError(str(exc)) from None  # pragma: no cover - the walk raises first
    except UnicodeEncodeError:  # a lone surrogate in a key, met while sorting by UTF-16
        raise InvalidJsonError("lone surrogate in an object key") from None
    return out


# ---------------------------------------------------------------------------------------- hashes


def sha256_hex(data: bytes) -> str:
    """Lower-case hex SHA-256 of raw bytes."""
    return hashlib.sha256(data).hexdigest()


def sha256_json(value: Any) -> str:
    """The contract's ``sha256(x)``: SHA-256 of ``canonical(x)``."""
    return hashlib.sha256(canonical(value)).hexdigest()


def sha256_text(text: str) -> str:
    """SHA-256 of the UTF-8 bytes of ``text`` (not of its JSON form)."""
    return hashlib.sha256(_encode_utf8(text)).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_json_or_none(value: Any) -> str | None:
    """``sha256_json(value)``, or None when ``value`` is None."""
    return None if value is None else sha256_json(value)


def sha256_text_or_none(text: str | None) -> str | None:
    """``sha256_text(text)``, or None when ``text`` is None."""
    return None if text is None else sha256_text(text)


def derive_run_id(source: str, event_id: str) -> str:
    """Run id of an event without one: ``"run_" + sha256(source + "\\n" + event_id)[:32]``."""
    return "run_" + sha256_text(source + "\n" + event_id)[:32]
