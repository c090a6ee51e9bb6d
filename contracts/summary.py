"""``request_summary``: the structure of an engine request, never its values (CONTRACT section 6).

Decisions where the contract leaves room:

- ``design_keys`` / ``context_keys`` are omitted (not empty lists) when ``design`` / the context
  object is absent or not a JSON object; an empty object gives an empty list.
- The context object is ``context`` when that is an object, else ``ctx`` when that is an object. The
  same object gives ``context_keys`` and the fallback ids; ``context`` and ``ctx`` are never merged.
- Each id is taken from the top level when it is a string of at most 128 characters (Unicode code
  points), else from the context object under the same rule, else omitted.
- A key is redacted when its lower-cased name contains one of the secret words as a substring.
"""

from __future__ import annotations

import re
from typing import Any, Final

__all__ = ["ID_FIELDS", "MAX_ID_CHARS", "MAX_KEYS", "REDACTED", "SECRET_WORDS", "summarize_request"]

MAX_KEYS: Final = 50
MAX_ID_CHARS: Final = 128
REDACTED: Final = "[redacted]"
SECRET_WORDS: Final = ("secret", "token", "password", "api_key", "credential", "authorization")
_SECRET: Final = re.compile("|".join(map(re.escape, SECRET_WORDS)))  # one C call a key
ID_FIELDS: Final = ("model_id", "feasibility_engine_id", "tool_id", "material_id", "machine_id")


def summarize_request(request: Any) -> dict[str, Any]:
    """Summarize a parsed request: key names (redacted where secret-like) and five string ids."""
    if not isinstance(request, dict):
        return {"type": _json_type(request), "note": "non-object request"}
    summary: dict[str, Any] = {"keys": _key_list(request)}
    design = request.get("design")
    if isinstance(design, dict):
        summary["design_keys"] = _key_list(design)
    context = _context_of(request)
    if context is not None:
        summary["context_keys"] = _key_list(context)
    for field in ID_FIELDS:
        value = _id_value(request.get(field))
        if value is None and context is not None:
            value = _id_value(context.get(field))
        if value is not None:
            summary[field] = value
    return summary


def _context_of(request: dict[Any, Any]) -> dict[Any, Any] | None:
    for name in ("context", "ctx"):
        value = request.get(name)
        if isinstance(value, dict):
            return value
    return None


def _id_value(value: Any) -> str | None:
    if isinstance(value, str) and len(value) <= MAX_ID_CHARS:
        return value
    return None


def _key_list(obj: dict[Any, Any]) -> list[str]:
    keys: list[str] = []
    for key in obj:
        if len(keys) == MAX_KEYS:
            break
        keys.append(_redact(str(key)))
    return keys


def _redact(key: str) -> str:
    return REDACTED if _SECRET.search(key.lower()) else key


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__  # not a JSON value; never produced by parse_json
