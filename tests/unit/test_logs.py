"""The one logging set-up: FastStream's lines in our format, JSON lines with their fields."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from worker import logs


@pytest.fixture
def restored() -> Iterator[None]:
    """Give the test's logging changes back (pytest's own handlers included)."""
    root, faststream = logging.getLogger(), logging.getLogger("faststream")
    saved = (root.handlers[:], root.level, faststream.handlers[:], faststream.propagate)
    yield
    root.handlers[:], faststream.handlers[:] = saved[0], saved[2]
    root.setLevel(saved[1])
    faststream.propagate = saved[3]
    faststream.setLevel(logging.NOTSET)


@pytest.mark.usefixtures("restored")
class TestConfigure:
    def test_faststream_through_our_handler(self) -> None:
        import faststream._internal.logger  # noqa: F401  (it adds its coloured handler)

        out = io.StringIO()
        logs.configure("text", stream=out)
        logging.getLogger(logs.BROKER_LOGGER).info("callback for Task-20 is being executed...")
        logging.getLogger("faststream").warning("a subscriber failed")
        assert logging.getLogger("faststream").handlers == []
        [line] = out.getvalue().splitlines()  # INFO chatter left out, the warning in our format
        assert " WARNING faststream[" in line
        assert line.endswith("]: a subscriber failed")
        assert "\x1b[" not in line

    def test_verbose_lets_faststream_speak(self) -> None:
        out = io.StringIO()
        logs.configure("text", verbose=True, stream=out)
        logging.getLogger(logs.BROKER_LOGGER).debug("access")
        assert "access" in out.getvalue()

    def test_json_fields(self) -> None:
        out = io.StringIO()
        logs.configure("json", stream=out)
        log = logging.getLogger("worker.consumer")
        log.info("dead-lettered seq %s", 7, extra=logs.fields(stream_seq=7, code="X", run_id=None))
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
        first, second = (json.loads(line) for line in out.getvalue().splitlines())
        assert first["message"] == "dead-lettered seq 7"
        assert (first["level"], first["logger"], first["stream_seq"], first["code"]) == (
            "INFO",
            "worker.consumer",
            7,
            "X",
        )
        assert "run_id" not in first  # None is left out
        assert first["ts"].endswith("+00:00")
        assert "ValueError: boom" in second["exc_info"]
