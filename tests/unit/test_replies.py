"""Every success reply of the API is checked against its contract model before it is sent: a
field it does not document, or a value of the wrong type, is a bug of ours (INTERNAL)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from contracts.api import CreateResult, ListPage
from worker.api import _ok


def test_a_documented_reply_is_sent_as_given() -> None:
    reply = _ok(CreateResult, run_id="run_" + "a" * 32, revision=1, duplicate=False)
    assert json.loads(reply.body) == {
        "ok": True,
        "run_id": "run_" + "a" * 32,
        "revision": 1,
        "duplicate": False,
    }


def test_an_undocumented_field_is_refused() -> None:
    with pytest.raises(TypeError, match=r"CreateResult does not document \['extra'\]"):
        _ok(CreateResult, run_id="r", revision=1, duplicate=False, extra=1)


def test_a_value_of_the_wrong_type_is_refused() -> None:
    with pytest.raises(ValidationError):
        _ok(ListPage, items=[{"run_id": "r"}], next_cursor=None)
