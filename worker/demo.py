"""A few realistic run events, so that a newcomer sees every kind of artifact appear."""

from __future__ import annotations

from typing import Any

from contracts.canonical import derive_run_id

SOURCE = "demo-engine"


def demo_events(tag: str = "demo") -> list[dict[str, Any]]:
    """OK, guarded OK, BLOCKED, ERROR, and a child run showing drift against its parent."""
    base: dict[str, Any] = {
        "schema": "rmos.run_event.v1",
        "source": SOURCE,
        "mode": "rosette",
        "tool_id": "saw-0.8mm",
        "event_type": "feasibility",
        "engine_id": "feasibility-core",
        "engine_version": "2.3.1",
        "material_id": "maple-1.5",
        "machine_id": "cnc-shapeoko-4",
        "request": {
            "design": {"rings": 7, "outer_diameter_mm": 110.0},
            "context": {"material_id": "maple-1.5", "api_key": "never-stored"},
        },
    }
    ok = {
        **base,
        "event_id": f"{tag}-ok",
        "status": "OK",
        "feasibility": {"max_depth_mm": 1.2, "min_wall_mm": 0.9, "chipload_ok": True},
        "decision": {"risk_level": "GREEN", "score": 91.5, "warnings": []},
    }
    guarded = {
        **base,
        "event_id": f"{tag}-guarded",
        "status": "OK",
        "decision": {"risk_level": "RED", "score": 35, "warnings": ["wall below 0.5 mm"]},
    }
    blocked = {
        **base,
        "event_id": f"{tag}-blocked",
        "status": "BLOCKED",
        "feasibility": {"max_depth_mm": 3.4, "min_wall_mm": 0.3},
        "decision": {"risk_level": "RED", "score": 12, "block_reason": "depth exceeds stock"},
    }
    error = {
        **base,
        "event_id": f"{tag}-error",
        "status": "ERROR",
        "errors": ["toolpath solver did not converge"],
        "decision": {"risk_level": "ERROR"},
    }
    child = {
        **ok,
        "event_id": f"{tag}-child",
        "engine_version": "2.4.0",
        "parent_run_id": derive_run_id(SOURCE, f"{tag}-ok"),
        "decision": {"risk_level": "YELLOW", "score": 77, "warnings": ["tight inner ring"]},
    }
    return [ok, guarded, blocked, error, child]
