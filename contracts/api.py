"""Request–reply bodies of CONTRACT section 5 (the operations this worker answers)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict

from contracts.models import Label, RunId, Sha256

KIND_HEADER = "Rmos-Kind"
MIME_HEADER = "Rmos-Mime"
FILENAME_HEADER = "Rmos-Filename"
SHA256_HEADER = "Rmos-Sha256"
ERROR_HEADER = "Rmos-Error"


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class GetRequest(_Request):
    run_id: RunId


class BlobRequest(_Request):
    sha256: Sha256


class BlobHeaders(_Request):
    """The metadata headers of ``attachments.put``."""

    kind: Label
    mime: Label
    filename: Label


def ok_reply(**fields: Any) -> bytes:
    """``{"ok": true, ...}``."""
    return json.dumps({"ok": True, **fields}, ensure_ascii=False).encode()


def error_reply(code: str, message: str, **extra: Any) -> bytes:
    """``{"ok": false, "error": {"code": ..., "message": ...}}``."""
    error = {"code": code, "message": message, **extra}
    return json.dumps({"ok": False, "error": error}, ensure_ascii=False).encode()
