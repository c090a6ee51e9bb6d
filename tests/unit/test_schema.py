"""The committed JSON Schemas match the models, and accept what the models accept."""

from __future__ import annotations

import json

import pytest

from contracts.schema import SCHEMA_DIR, render, schemas


class TestSchemas:
    """``contracts/schemas/`` is what other languages build from: it must not go stale."""

    @pytest.mark.parametrize("name", sorted(schemas()))
    def test_committed_copy_is_current(self, name: str) -> None:
        """Regenerate with ``python -m contracts.schema`` after changing a model."""
        assert (SCHEMA_DIR / name).read_text() == render(schemas()[name])

    def test_event_schema_forbids_unknown_fields(self) -> None:
        """Unknown fields are a schema violation in the schema too, not only in Python."""
        event = json.loads((SCHEMA_DIR / "run_event.v1.json").read_text())
        assert event["additionalProperties"] is False
        assert {"schema", "event_id", "source", "status"} <= set(event["required"])
