"""What the operator commands print, and how they fail: tables, ``key: value`` blocks, JSON."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from enum import IntEnum
from typing import Any, TextIO

CELL_WIDTH = 64  # values wider than this are shortened in tables (a SHA-256 still fits)
ELLIPSIS = "…"


class Exit(IntEnum):
    """The exit codes of every ``rmos-runs`` command (README, "Exit codes")."""

    OK = 0
    FAILED = 1  # verify: the run is not valid; migrate: conflicts; the worker stopped on a failure
    USAGE = 2  # a bad argument or setting (argparse's own code)
    API_ERROR = 3  # the request failed: an error reply, no worker answering, a refused replay
    UNREACHABLE = 4  # NATS not reached within RMOS_CONNECT_TIMEOUT_S, or the connection lost


class CommandError(Exception):
    """A command refused or failed for a reason the operator can read (exit 3, no traceback)."""


class UsageError(CommandError):
    """A command given what it cannot use: no NATS URL, a file it cannot read (exit 2)."""


def emit(out: TextIO, text: str) -> None:
    out.write(text + "\n")


def note(text: str) -> None:
    sys.stderr.write(text + "\n")


def json_line(obj: Any) -> str:
    """One compact JSON object per line (``--json``)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def cell(value: Any) -> str:
    """A table cell or block value: ``-`` for null, strings as they are, the rest as JSON."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def shorten(text: str, width: int = CELL_WIDTH) -> str:
    """One line (runs of whitespace become one space), cut to ``width`` with an ellipsis."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: max(width - 1, 0)] + ELLIPSIS


def table(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """An aligned text table: upper-case header, two spaces between columns, no trailing blanks."""
    lines = [[column.upper() for column in columns]]
    lines += [[shorten(cell(row.get(column))) for column in columns] for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    return "\n".join(
        "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Leaves of nested objects and lists as ``(dotted.path, value)``, as ``diff`` names paths."""
    if isinstance(value, dict) and value:
        items: Iterable[tuple[Any, Any]] = value.items()
    elif isinstance(value, list) and value:
        items = enumerate(value)
    else:
        return [(prefix, value)]
    pairs: list[tuple[str, Any]] = []
    for key, child in items:
        pairs += flatten(child, f"{prefix}.{key}" if prefix else str(key))
    return pairs


def key_values(pairs: Iterable[tuple[str, Any]]) -> str:
    """A ``key: value`` block with the values aligned."""
    pairs = list(pairs)
    width = max((len(key) for key, _ in pairs), default=0) + 1
    return "\n".join(f"{key + ':':<{width}} {cell(value)}".rstrip() for key, value in pairs)


class Progress:
    """A progress bar (rich) on stderr while stderr is a terminal; nothing in a log or a pipe,
    where the caller's summary line says what was done."""

    def __init__(self, total: int, unit: str = "runs", *, terminal: bool | None = None) -> None:
        self.total = total
        self.started = time.monotonic()
        self.done = 0
        self._bar: Any = None
        if sys.stderr.isatty() if terminal is None else terminal:
            from rich.console import Console  # imported here: most commands never draw one
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as Bar

            self._bar = Bar(
                TextColumn(unit),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._task = self._bar.add_task(unit, total=total)
            self._bar.start()

    def __call__(self, done: int) -> None:
        self.done = done
        if self._bar is not None:
            self._bar.update(self._task, completed=done)

    def close(self) -> float:
        """Take the bar down; the seconds since the start."""
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done)
            self._bar.stop()
            self._bar = None
        return time.monotonic() - self.started
