"""``rmos-runs`` with the Merkle log switched off (no leaf is appended), for the with/without
comparison of ``bench/log_bench.py`` only: never a way to run the worker."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from worker import cli
from worker.store.merkle_log import MerkleLog


def _no_leaves(self: MerkleLog, records: Sequence[dict[str, Any]]) -> list[int]:
    return list(range(len(records)))


if __name__ == "__main__":
    MerkleLog.append = _no_leaves  # type: ignore[method-assign]
    sys.exit(cli.main())
