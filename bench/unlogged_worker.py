"""``rmos-runs`` with the Merkle log switched off (no leaf is appended), for the with/without
comparison of ``bench/log_bench.py`` only: never a way to run the worker."""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Sequence
from typing import Any

from worker import cli
from worker.store.merkle_log import MerkleLog


def _no_leaves(
    self: MerkleLog, db: sqlite3.Connection, records: Sequence[dict[str, Any]]
) -> list[int]:
    """``MerkleLog``'s append inside a transaction (every leaf of the files store goes through it),
    appending nothing."""
    return list(range(len(records)))


if __name__ == "__main__":
    MerkleLog._append_in = _no_leaves  # type: ignore[method-assign]
    sys.exit(cli.main())
