"""The rules of ``api.patch_meta``, as pure functions. No I/O, no clock.

A patch maps meta keys to their new values; a null value removes its key. The rules:

- a patch is not empty, and never names ``guard`` (the safety guard's record: set at creation,
  never changed or removed);
- every value has a canonical JSON form (``contracts.canonical``: no integer beyond
  ±(2**53 - 1), no NaN or Infinity);
- the patched ``meta`` is at most :data:`MAX_META_BYTES` long, measured as ``json.dumps``
  writes it (ASCII, default separators); only a patch that changes something is measured;
- a patch that changes nothing (it sets what is there, removes what is absent) makes no
  revision: :func:`apply_meta_patch` returns None.

Every refusal raises :class:`MetaPatchError`, whose message the API replies with as
``INVALID_REQUEST``.
"""

from __future__ import annotations

import json
from typing import Any

from contracts.canonical import CanonicalError, canonical

MAX_META_BYTES = 64 * 1024
GUARD = "guard"


class MetaPatchError(ValueError):
    """A patch the rules refuse; the message says why."""


def check_meta_patch(patch: dict[str, Any]) -> None:
    """Refuse a patch that breaks a rule whatever the run's meta is (empty, names ``guard``,
    a value without a canonical form): checked before the run is read."""
    if not patch:
        raise MetaPatchError("meta_updates is empty")
    if GUARD in patch:
        raise MetaPatchError("meta.guard is the safety guard's and never changes")
    try:
        canonical(patch)
    except CanonicalError as exc:
        raise MetaPatchError(f"meta_updates: {exc}") from None


def apply_meta_patch(meta: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any] | None:
    """``meta`` with ``patch`` applied, or None when that changes nothing; every rule checked
    (:func:`check_meta_patch` first). ``meta`` itself is not modified."""
    check_meta_patch(patch)
    patched = {**meta, **patch}
    for key, value in patch.items():
        if value is None:
            del patched[key]
    if patched == meta:
        return None
    if len(json.dumps(patched)) > MAX_META_BYTES:
        raise MetaPatchError("meta over 64 KiB")
    return patched
