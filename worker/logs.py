"""One logging set-up for every program and every library in it (ours, FastStream's, nats-py's,
asyncio's): one handler on the root logger, on stderr, in one format.

- ``text`` (the default): ``time LEVEL logger[pid]: message``, no colour codes (FastStream's
  own handler, which colours even a file or a pipe, is taken off).
- ``json`` (``RMOS_LOG_FORMAT=json``): one JSON object a line (python-json-logger) with
  ``ts`` (ISO 8601, UTC), ``level``, ``logger``, ``pid``, ``message``, the traceback as
  ``exc_info``, and the fields a line names with ``extra=``: ``run_id``, ``stream_seq``,
  ``code``, ``op``, ... (``fields()``).

FastStream's own INFO lines (app starting, "callback for Task-20 is being executed...") repeat
what the worker says itself: its loggers log WARNING and above unless ``verbose``.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal, TextIO

from pythonjsonlogger.json import JsonFormatter

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
JSON_FIELDS = "{levelname}{name}{process}{message}"
RENAMED = {"levelname": "level", "name": "logger", "process": "pid"}
BROKER_LOGGER = "faststream.broker"  # given to every broker instead of FastStream's own


_faststream_level = {"level": logging.WARNING}  # set by configure()


def configure(
    log_format: LogFormat = "text", *, verbose: bool = False, stream: TextIO | None = None
) -> None:
    """Route every logger through one handler on ``stream`` (stderr) in ``log_format``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_formatter(log_format))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    _faststream_level["level"] = logging.DEBUG if verbose else logging.WARNING
    if "faststream" in sys.modules:
        take_over_faststream()
    logging.captureWarnings(True)


def take_over_faststream() -> None:
    """FastStream gives its logger, on import, a handler of its own (coloured, on stderr, not
    propagated): route it through the one set-up instead. Called when a broker is made."""
    faststream = logging.getLogger("faststream")
    for old in list(faststream.handlers):
        faststream.removeHandler(old)
    faststream.propagate = True
    faststream.setLevel(_faststream_level["level"])


def _formatter(log_format: LogFormat) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter(JSON_FIELDS, style="{", rename_fields=RENAMED, timestamp="ts")
    return logging.Formatter(TEXT_FORMAT)


def fields(**values: Any) -> dict[str, Any]:
    """``extra=`` for a log call: the structured fields of a JSON line (None values left out)."""
    return {key: value for key, value in values.items() if value is not None}
