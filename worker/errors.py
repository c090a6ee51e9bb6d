"""The worker's exception tree; how each maps to an ack outcome lives in ``worker.consumer``.

WorkerError
├── RejectedError      refused for good: a dead letter (stream) or an error reply (API)
└── TransientError     a passing cause that belongs to one message: nak with a growing delay
    ├── UnavailableError   not ready to answer (an index rebuilding or behind): retry later
    └── StoreOutageError   the store as a whole fails (no space, I/O errors, no leader): the
                           consumers pause and retry the same write (``worker.outage``)
"""

from __future__ import annotations

from contracts.codes import DeadLetterCode

DETAIL_LIMIT = 4000  # the contract allows 4 KB


class WorkerError(Exception):
    """Base of every error the worker raises on purpose."""


class RejectedError(WorkerError):
    """Input that is refused for good, with the contract's code and a readable reason."""

    def __init__(self, code: DeadLetterCode, detail: str) -> None:
        self.code = code
        self.detail = detail[:DETAIL_LIMIT]
        super().__init__(f"{code}: {self.detail}")


class TransientError(WorkerError):
    """A failure that may pass; the message is handed back for a later delivery."""


class UnavailableError(TransientError):
    """The store cannot answer yet, e.g. the ``list`` index is rebuilding or behind."""


class RevisionConflictError(WorkerError):
    """A compare-and-swap on ``revision`` lost: the run changed since the caller read it."""

    def __init__(self, run_id: str, expected: int, actual: int) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(f"run {run_id} is at revision {actual}, not {expected}")


class StoreOutageError(TransientError):
    """The store fails as a whole, whatever the message: no space, I/O errors, a read-only file
    system, a JetStream store unreachable or without a leader. Nothing is wrong with the
    message, so no delivery is spent on it: the consumers hold their messages and retry."""
