"""Integrity checks of a stored artifact (CONTRACT section 5, ``verify``). Pure: no I/O, no clock.

The caller reads the artifact by run id, hashes each attachment's blob on disk and passes what it
found; ``verify_artifact`` compares. The reply's ``valid`` is ``all(check.ok for check in checks)``.

Each check's ``expected`` is what the record (or the lookup) claims and ``actual`` what was
recomputed or found. A tampered artifact never raises: whatever cannot be read or hashed gives a
failed check whose ``actual`` (or ``expected``) says why in words, and every ``expected`` and
``actual`` is a value the API can write as canonical JSON.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from contracts.canonical import MAX_SAFE_INTEGER, sha256_json
from contracts.models import SHA256_PATTERN
from worker.core.ingest import content_sha256

BlobFacts = tuple[str, int] | None
"""What the caller found for one blob: ``(sha256 of its bytes, size)``, or None when missing."""

_TEXT_LIMIT: Final = 200
_SHA256 = re.compile(SHA256_PATTERN)


@dataclass(frozen=True, slots=True)
class Check:
    """One comparison of a ``verify`` reply: ``expected`` the claim, ``actual`` what was found."""

    name: str
    ok: bool
    expected: Any
    actual: Any

    def as_dict(self) -> dict[str, Any]:
        """The check as the wire shows it: ``{name, ok, expected, actual}``."""
        return {"name": self.name, "ok": self.ok, "expected": self.expected, "actual": self.actual}


def verify_artifact(
    artifact: dict[str, Any], blobs: Mapping[str, BlobFacts], *, run_id: str
) -> list[Check]:
    """The checks of a stored artifact, in order.

    ``run_id`` (the artifact names the run it was looked up by), ``content_sha256`` (recomputed
    over the immutable core), ``feasibility_sha256`` (only when ``feasibility`` is stored), then
    ``attachments.<i>.sha256`` and ``attachments.<i>.size_bytes`` for each attachment, from
    ``blobs``: attachment sha256 → what is on disk (a sha256 absent from ``blobs`` is missing).
    """
    document = artifact if isinstance(artifact, dict) else {}
    checks = [_run_id_check(document, run_id), _content_check(artifact)]
    if "feasibility" in document:
        checks.append(_feasibility_check(document))
    if "attachments" in document:
        checks.extend(_attachment_checks(document["attachments"], blobs))
    return checks


def parse_stored(data: bytes) -> dict[str, Any] | Check:
    """The stored document, or the failed check saying that its bytes are not JSON at all."""
    try:
        document: dict[str, Any] = json.loads(data)
    except ValueError as exc:
        return Check("artifact", False, "a JSON object", f"not JSON: {exc}")
    return document


def attachment_hashes(artifact: Any) -> set[str]:
    """The well-formed blob hashes an artifact names (a tampered one may name anything)."""
    entries = artifact.get("attachments") if isinstance(artifact, dict) else None
    if not isinstance(entries, list):
        return set()
    hashes = (e.get("sha256") for e in entries if isinstance(e, dict))
    return {h for h in hashes if isinstance(h, str) and _SHA256.fullmatch(h)}


def _run_id_check(document: dict[str, Any], run_id: str) -> Check:
    stored = document.get("run_id")
    return Check("run_id", stored == run_id, run_id, shown(stored))


def _content_check(artifact: Any) -> Check:
    if not isinstance(artifact, dict):
        reason = f"not computable: the artifact is a JSON {json_type(artifact)}, not an object"
        return Check("content_sha256", False, None, reason)
    stored = artifact.get("content_sha256")
    digest, actual = _recompute(content_sha256, artifact)
    return Check("content_sha256", digest is not None and digest == stored, shown(stored), actual)


def _feasibility_check(document: dict[str, Any]) -> Check:
    hashes = document.get("hashes")
    stored = hashes.get("feasibility_sha256") if isinstance(hashes, dict) else None
    digest, actual = _recompute(sha256_json, document["feasibility"])
    if isinstance(hashes, dict):
        expected = shown(stored)
    else:
        expected = (
            "no hashes" if "hashes" not in document else f"hashes: a JSON {json_type(hashes)}"
        )
    return Check("feasibility_sha256", digest is not None and digest == stored, expected, actual)


def _recompute(hash_of: Callable[[Any], str], value: Any) -> tuple[str | None, str]:
    """``(digest, digest)``, or ``(None, reason)`` when ``value`` has no canonical form."""
    try:
        digest = hash_of(value)
    except (ValueError, TypeError, RecursionError) as exc:
        # CanonicalError is a ValueError; so is str() of an int too long to print.
        return None, "not computable: " + _clip(str(exc) or type(exc).__name__)
    return digest, digest


def _attachment_checks(attachments: Any, blobs: Mapping[str, BlobFacts]) -> list[Check]:
    if not isinstance(attachments, list):
        return [Check("attachments", False, "a JSON array", f"a JSON {json_type(attachments)}")]
    checks: list[Check] = []
    for index, entry in enumerate(attachments):
        checks.extend(_blob_checks(f"attachments.{index}", entry, blobs))
    return checks


def _blob_checks(name: str, entry: Any, blobs: Mapping[str, BlobFacts]) -> list[Check]:
    if not isinstance(entry, dict):
        return [Check(name, False, "a JSON object", f"a JSON {json_type(entry)}")]
    sha, size = entry.get("sha256"), entry.get("size_bytes")
    found = blobs.get(sha) if isinstance(sha, str) else None
    if found is None:
        return [
            Check(f"{name}.sha256", False, shown(sha), None),
            Check(f"{name}.size_bytes", False, shown(size), None),
        ]
    actual_sha, actual_size = found
    size_ok = type(size) is int and size == actual_size
    return [
        Check(f"{name}.sha256", actual_sha == sha, sha, actual_sha),
        Check(f"{name}.size_bytes", size_ok, shown(size), actual_size),
    ]


def json_type(value: Any) -> str:
    """The JSON name of a value's type (``object``, ``array``, ``string``, ...)."""
    if value is None:
        return "null"
    for kind, name in ((bool, "boolean"), (int, "number"), (float, "number"), (str, "string")):
        if isinstance(value, kind):
            return name
    if isinstance(value, dict):
        return "object"
    return "array" if isinstance(value, list | tuple) else type(value).__name__


def shown(value: Any) -> Any:
    """A stored value as a check may show it: short scalars as they are, anything else in words."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return _clip(value)
    if isinstance(value, int) and abs(value) <= MAX_SAFE_INTEGER:
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, int):
        return "an integer beyond ±(2**53 - 1)"
    return f"a JSON {json_type(value)}"


def _clip(text: str) -> str:
    return text if len(text) <= _TEXT_LIMIT else text[:_TEXT_LIMIT] + "…"
