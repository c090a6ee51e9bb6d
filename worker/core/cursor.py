"""Opaque ``list`` cursors: the position after a page, bound to the filters that made it.

A cursor is keyset-based, ``(created_at_utc, run_id)`` of the last item returned, so a page is
stable while new runs arrive: nothing already seen is repeated and nothing older is skipped.
Reusing a cursor with other filters is refused instead of silently returning a wrong page.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from contracts.canonical import sha256_json


class CursorError(ValueError):
    """A cursor that was not made by ``encode_cursor`` for these filters."""


def filters_fingerprint(filters: dict[str, Any]) -> str:
    return sha256_json(filters)[:16]


def encode_cursor(created_at_utc: str, run_id: str, filters: dict[str, Any]) -> str:
    raw = json.dumps([created_at_utc, run_id, filters_fingerprint(filters)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, filters: dict[str, Any]) -> tuple[str, str]:
    """The ``(created_at_utc, run_id)`` a cursor points after; CursorError when it is not ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, run_id, fingerprint = json.loads(raw)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise CursorError("not a cursor of this API") from exc
    if not (isinstance(created, str) and isinstance(run_id, str)):
        raise CursorError("not a cursor of this API")
    if fingerprint != filters_fingerprint(filters):
        raise CursorError("the cursor was made for other filters")
    return created, run_id
