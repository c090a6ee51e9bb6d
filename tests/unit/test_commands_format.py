"""The operator commands' pure helpers: tables, key: value blocks, replay plans."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from contracts.models import DeadLetter
from contracts.subjects import Subjects
from worker.commands import attachment_meta
from worker.core.dead_letter import dead_letter
from worker.dlq import DLQ_COLUMNS, dead_letter_row, replay_plan
from worker.output import (
    CommandError,
    Progress,
    cell,
    flatten,
    json_line,
    key_values,
    shorten,
    table,
)

SUBJECTS = Subjects()


class TestCells:
    """One value, one readable string."""

    @pytest.mark.parametrize(
        ("value", "text"),
        [
            (None, "-"),
            ("OK", "OK"),
            (3, "3"),
            (True, "true"),
            (1.5, "1.5"),
            ([], "[]"),
            ({"a": "é"}, '{"a":"é"}'),
        ],
    )
    def test_cell(self, value: object, text: str) -> None:
        """Null is a dash, strings are bare, everything else is compact JSON."""
        assert cell(value) == text

    def test_shorten_keeps_short_text(self) -> None:
        assert shorten("short", 10) == "short"

    def test_shorten_cuts_with_ellipsis(self) -> None:
        """Cut text keeps its width, the last character an ellipsis."""
        assert shorten("abcdefghij", 5) == "abcd…"
        assert len(shorten("x" * 200, 60)) == 60

    def test_shorten_makes_one_line(self) -> None:
        """A multi-line detail becomes one line in a table."""
        assert shorten("a\n  b\tc", 20) == "a b c"

    def test_json_line(self) -> None:
        """Compact, one line, non-ASCII kept, round-trips."""
        obj = {"a": [1, 2], "b": "é\nx"}
        line = json_line(obj)
        assert "\n" not in line
        assert json.loads(line) == obj
        assert "é" in line


class TestTable:
    """Aligned columns under an upper-case header."""

    def test_aligned(self) -> None:
        rows: list[dict[str, Any]] = [{"name": "a", "n": 1}, {"name": "longer", "n": None}]
        assert table(rows, ["name", "n"]).splitlines() == [
            "NAME    N",
            "a       1",
            "longer  -",
        ]

    def test_header_only_when_empty(self) -> None:
        assert table([], ["run_id", "status"]) == "RUN_ID  STATUS"

    def test_missing_key_is_a_dash(self) -> None:
        assert table([{}], ["x"]).splitlines()[1] == "-"

    def test_no_trailing_blanks(self) -> None:
        """The last column is not padded, even when a row's value is short."""
        lines = table([{"a": "x", "b": "long value"}, {"a": "y", "b": ""}], ["a", "b"]).splitlines()
        assert all(line == line.rstrip() for line in lines)

    def test_wide_values_shortened(self) -> None:
        """A long value is cut; a SHA-256 is not."""
        sha = "a" * 64
        text = table([{"v": sha}, {"v": "z" * 500}], ["v"])
        assert sha in text
        assert max(len(line) for line in text.splitlines()) == 64


class TestBlocks:
    """``get`` shows a run as dotted paths, as ``diff`` names them."""

    def test_flatten(self) -> None:
        run: dict[str, Any] = {
            "run_id": "run_1",
            "decision": {"risk_level": "GREEN", "warnings": ["w1", "w2"]},
            "meta": {},
            "errors": [],
            "notes": None,
        }
        assert flatten(run) == [
            ("run_id", "run_1"),
            ("decision.risk_level", "GREEN"),
            ("decision.warnings.0", "w1"),
            ("decision.warnings.1", "w2"),
            ("meta", {}),
            ("errors", []),
            ("notes", None),
        ]

    def test_flatten_list_of_objects(self) -> None:
        assert flatten({"attachments": [{"sha256": "s"}]}) == [("attachments.0.sha256", "s")]

    def test_key_values_aligned(self) -> None:
        assert key_values([("a", 1), ("long_key", "v"), ("n", None), ("e", {})]).splitlines() == [
            "a:        1",
            "long_key: v",
            "n:        -",
            "e:        {}",
        ]

    def test_key_values_empty(self) -> None:
        assert key_values([]) == ""


class TestAttachmentMeta:
    """``attach`` guesses the mime type from the name when none is given."""

    def test_guessed(self) -> None:
        assert attachment_meta(Path("/x/preview.svg"), None, None) == (
            "image/svg+xml",
            "preview.svg",
        )

    def test_unknown_extension(self) -> None:
        assert attachment_meta(Path("blob.zzz-unknown"), None, None)[0] == (
            "application/octet-stream"
        )

    def test_given(self) -> None:
        assert attachment_meta(Path("a.svg"), "text/plain", "b.nc") == ("text/plain", "b.nc")


def letter(
    payload: bytes,
    subject: str = "rmos.runs.v1.events.engine-a",
    headers: dict[str, str] | None = None,
) -> DeadLetter:
    body = dead_letter(
        code="UNKNOWN_ATTACHMENT",
        detail="attachments.0: not in the blob store\nsecond line",
        subject=subject,
        headers=headers if headers is not None else {"Nats-Msg-Id": "engine-a:e1"},
        payload=payload,
        stream_seq=7,
        deliveries=1,
        now=datetime(2026, 11, 24, 10, 0, tzinfo=UTC),
    )
    return DeadLetter.model_validate(body)


class TestDeadLetterRow:
    """What ``dlq list`` shows of a dead letter."""

    def test_row(self) -> None:
        body = letter(b"{}").model_dump(by_alias=True)
        row = dead_letter_row(12, body)
        assert list(row) == list(DLQ_COLUMNS)
        assert row["seq"] == 12
        assert row["code"] == "UNKNOWN_ATTACHMENT"
        assert row["stream_seq"] == 7
        assert "\n" not in row["detail"]

    def test_detail_shortened(self) -> None:
        row = dead_letter_row(1, {"detail": "x" * 4096})
        assert len(row["detail"]) == 60
        assert row["detail"].endswith("…")


class TestReplayPlan:
    """A dead letter becomes the same bytes on the same subject, with a new message id."""

    def test_same_bytes_new_msg_id(self) -> None:
        """The old Nats-Msg-Id would be a duplicate: replaced by replay:<dlq seq>."""
        payload = b'{"schema":"rmos.run_event.v1"}'
        headers = {"Nats-Msg-Id": "engine-a:e1", "Nats-Expected-Stream": "X", "trace": "t1"}
        plan = replay_plan(5, letter(payload, headers=headers), SUBJECTS, "RMOS_DLQ")
        assert plan.subject == "rmos.runs.v1.events.engine-a"
        assert plan.payload == payload
        assert plan.headers == {
            "trace": "t1",
            "Nats-Msg-Id": "replay:5",
            "Rmos-Replay-Of": "RMOS_DLQ:5",
        }

    def test_patch_subject_allowed(self) -> None:
        subject = "rmos.runs.v1.explain.patch.run_" + "0" * 32
        assert replay_plan(1, letter(b"{}", subject), SUBJECTS, "RMOS_DLQ").subject == subject

    def test_truncated_refused(self) -> None:
        """Only the first 64 KiB were kept: replaying them would publish a different event."""
        with pytest.raises(CommandError, match="payload_truncated"):
            replay_plan(3, letter(b"x" * (65 * 1024)), SUBJECTS, "RMOS_DLQ")

    @pytest.mark.parametrize(
        "subject",
        ["rmos.runs.v1.dlq.INVALID_JSON", "other.v1.events.engine-a", "rmos.runs.v1.api.create"],
    )
    def test_foreign_subject_refused(self, subject: str) -> None:
        """Only what the worker consumes, in this deployment, is replayed."""
        with pytest.raises(CommandError, match="not an event or patch subject"):
            replay_plan(3, letter(b"{}", subject), SUBJECTS, "RMOS_DLQ")

    def test_other_deployment(self) -> None:
        """Another subject prefix, another set of replayable subjects."""
        other = Subjects(prefix="shop2", stream_prefix="S2")
        plan = replay_plan(1, letter(b"{}", "shop2.v1.events.e"), other, "S2_DLQ")
        assert plan.headers["Rmos-Replay-Of"] == "S2_DLQ:1"

    def test_corrupt_payload_refused(self) -> None:
        """Bytes that no longer match payload_sha256 are not published."""
        bad = letter(b"{}").model_copy(
            update={"payload_b64": base64.b64encode(b"[]").decode(), "payload_size": 2}
        )
        assert bad.payload_sha256 == hashlib.sha256(b"{}").hexdigest()
        with pytest.raises(CommandError, match="payload_sha256"):
            replay_plan(2, bad, SUBJECTS, "RMOS_DLQ")


class TestProgress:
    """A bar only on a terminal: a log file or a pipe gets no control codes."""

    def test_silent_off_a_terminal(self, capsys: pytest.CaptureFixture[str]) -> None:
        progress = Progress(10, "runs", terminal=False)
        progress(5)
        progress(10)
        assert progress.close() >= 0
        assert capsys.readouterr() == ("", "")

    def test_a_bar_on_a_terminal(self, capsys: pytest.CaptureFixture[str]) -> None:
        progress = Progress(10, "runs", terminal=True)
        progress(10)
        progress.close()
        assert "10/10" in capsys.readouterr().err
