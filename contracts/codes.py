"""Error and dead-letter codes of CONTRACT sections 5 and 7."""

from enum import StrEnum


class DeadLetterCode(StrEnum):
    """Why a message could not become an artifact or a transition, in precedence order."""

    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    INVALID_JSON = "INVALID_JSON"
    SCHEMA_VIOLATION = "SCHEMA_VIOLATION"
    SOURCE_MISMATCH = "SOURCE_MISMATCH"
    HASH_MISMATCH = "HASH_MISMATCH"
    UNKNOWN_ATTACHMENT = "UNKNOWN_ATTACHMENT"
    RUN_ID_CONFLICT = "RUN_ID_CONFLICT"
    INVALID_PATCH = "INVALID_PATCH"
    MAX_DELIVERIES = "MAX_DELIVERIES"


class ApiErrorCode(StrEnum):
    """Codes of ``{"ok": false, "error": {"code": ...}}`` replies besides the dead-letter ones."""

    INVALID_REQUEST = "INVALID_REQUEST"
    RUN_NOT_FOUND = "RUN_NOT_FOUND"
    BLOB_NOT_FOUND = "BLOB_NOT_FOUND"
    REVISION_CONFLICT = "REVISION_CONFLICT"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    UNAVAILABLE = "UNAVAILABLE"  # a passing condition: the store fails or an index rebuilds
    INTERNAL = "INTERNAL"
