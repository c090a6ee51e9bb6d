"""List cursors: round trip, opacity, binding to the filters."""

from __future__ import annotations

import pytest

from worker.core.cursor import CursorError, decode_cursor, encode_cursor

WHEN = "2026-11-24T10:00:00.000000+00:00"
RUN = "run_" + "a" * 32


class TestCursor:
    """A cursor says where the next page starts, and only for the query that made it."""

    def test_round_trip(self) -> None:
        """Decoding gives back the position it was made from."""
        cursor = encode_cursor(WHEN, RUN, {"status": "OK"})
        assert decode_cursor(cursor, {"status": "OK"}) == (WHEN, RUN)

    def test_url_safe(self) -> None:
        """The cursor travels in JSON and URLs untouched."""
        cursor = encode_cursor(WHEN, RUN, {})
        assert cursor.replace("-", "").replace("_", "").isalnum()

    def test_other_filters_refused(self) -> None:
        """A cursor reused with other filters is an error, not a wrong page."""
        cursor = encode_cursor(WHEN, RUN, {"status": "OK"})
        with pytest.raises(CursorError, match="other filters"):
            decode_cursor(cursor, {"status": "BLOCKED"})

    @pytest.mark.parametrize("bad", ["", "!!!", "bm90IGpzb24", "WzEsMiwzXQ", "W10"])
    def test_garbage_refused(self, bad: str) -> None:
        """Anything not made by the encoder is refused."""
        with pytest.raises(CursorError):
            decode_cursor(bad, {})
