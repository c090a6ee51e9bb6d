"""JSON Schema of the wire models, for producers and explainers in other languages.

``python -m contracts.schema DIR`` writes one file per model; ``contracts/schemas/`` holds the
committed copies, kept current by a unit test.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from contracts.models import DeadLetter, RunArtifact, RunEvent

MODELS: dict[str, type[BaseModel]] = {
    "run_event.v1.json": RunEvent,
    "run_artifact.v1.json": RunArtifact,
    "dead_letter.v1.json": DeadLetter,
}
SCHEMA_DIR = Path(__file__).parent / "schemas"


def schemas() -> dict[str, dict[str, Any]]:
    """File name → JSON Schema (by alias, so ``schema`` is spelled as on the wire)."""
    return {name: model.model_json_schema(by_alias=True) for name, model in MODELS.items()}


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def export(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in schemas().items():
        path = directory / name
        path.write_text(render(schema))
        written.append(path)
    return written


if __name__ == "__main__":
    for path in export(Path(sys.argv[1]) if len(sys.argv) > 1 else SCHEMA_DIR):
        print(path)
