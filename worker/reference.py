"""The reference explainer: a user of the explainer SDK (``worker.explainer``) like any other.

``rmos-runs explainer`` runs it by default (``--model worker.reference:RuleExplainer``). Its
explanation is deterministic and local: the run's decision, the safety guard's verdict,
warnings, errors, feasibility and drift, in plain sentences. A team's own model replaces it with
``--model package.module:attr``.
"""

from __future__ import annotations

import json
from typing import Any

from worker.explainer import Explanation


class RuleExplainer:
    """Explains a run from its decision, feasibility, warnings and drift, deterministically."""

    explainer_id = "rmos-reference-explainer"
    version = "1"

    def explain(self, run: dict[str, Any]) -> Explanation:
        decision = run.get("decision", {})
        lines = [
            f"Run {run['run_id']} ({run['event_type']} of {run['tool_id']}, mode {run['mode']}) "
            f"was recorded {run['status']} with risk level {decision.get('risk_level', 'unknown')}"
            + (f" and score {decision['score']}." if "score" in decision else ".")
        ]
        if run.get("meta", {}).get("guard"):
            guard = run["meta"]["guard"]
            lines.append(
                f"The engine claimed {guard['claimed_status']}, but the safety guard blocked it: "
                + ", ".join(guard["violations"])
                + "."
            )
        if decision.get("block_reason"):
            lines.append(f"Block reason: {decision['block_reason']}.")
        lines += [f"Warning: {w}." for w in decision.get("warnings", [])]
        lines += [f"Error: {e}." for e in run.get("errors", [])]
        feasibility = run.get("feasibility")
        if isinstance(feasibility, dict) and feasibility:
            facts = ", ".join(f"{k} = {json.dumps(v)}" for k, v in sorted(feasibility.items()))
            lines.append(f"Feasibility: {facts[:1000]}.")
        drift = run.get("drift_summary") or {}
        if drift.get("changed"):
            lines.append("Changed since the parent run: " + ", ".join(drift["changed"]) + ".")
        elif drift.get("parent") == "NOT_FOUND":
            lines.append("Its parent run is not in the store.")
        return Explanation(summary=" ".join(lines[:3]), text="\n".join(lines))
