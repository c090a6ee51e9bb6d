"""The explainer SDK's pure parts: loading ``--model``, and what an ``explain`` result or
exception becomes (CONTRACT section 4: a summary or an error of 1-4000 characters)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from worker import explainer as sdk
from worker.output import Exit
from worker.reference import RuleExplainer

MODULE = """
from worker.explainer import Explanation

def explain(run):
    return f"{run['run_id']} was {run['status']}"

explain.explainer_id = "team-x"

class Model:
    version = "7"
    def explain(self, run):
        return Explanation("short", "long")

async def slow(run):
    return "async"

not_callable = 3
"""


@pytest.fixture
def models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    (tmp_path / "team_models.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "team_models"
    sys.modules.pop("team_models", None)


class TestLoad:
    def test_a_function(self, models: str) -> None:
        explain = sdk.load(f"{models}:explain")
        assert callable(explain)
        explainer = sdk.Explainer(explain, "nats://127.0.0.1:4222")
        assert (explainer.explainer_id, explainer.version) == ("team-x", "1")

    def test_a_class_is_made_and_its_method_used(self, models: str) -> None:
        model = sdk.load(f"{models}:Model")
        explainer = sdk.Explainer(model, "nats://127.0.0.1:4222")
        assert (explainer.explainer_id, explainer.version) == (f"{models}.Model.explain", "7")

    def test_an_async_function(self, models: str) -> None:
        explainer = sdk.Explainer(sdk.load(f"{models}:slow"), "nats://127.0.0.1:4222")
        assert explainer.explainer_id == f"{models}.slow"

    def test_the_reference(self) -> None:
        model = sdk.load("worker.reference:RuleExplainer")
        assert isinstance(model, RuleExplainer)
        explainer = sdk.Explainer(model, "nats://127.0.0.1:4222")
        assert (explainer.explainer_id, explainer.version) == ("rmos-reference-explainer", "1")

    @pytest.mark.parametrize(
        ("spec", "said"),
        [
            ("team_models", "expected package.module:attr"),
            (":explain", "expected package.module:attr"),
            ("no_such_module_here:explain", "cannot import no_such_module_here"),
            ("team_models:missing", "team_models has no missing"),
            ("team_models:not_callable", "neither callable nor has an explain method"),
        ],
    )
    def test_what_cannot_explain_is_a_usage_error(self, models: str, spec: str, said: str) -> None:
        with pytest.raises(sdk.ModelError, match=said):
            sdk.load(spec)

    def test_concurrency_at_least_one(self) -> None:
        with pytest.raises(ValueError, match="concurrency"):
            sdk.Explainer(RuleExplainer(), "nats://127.0.0.1:4222", concurrency=0)


class TestOutcome:
    def test_a_string_is_summary_and_text(self) -> None:
        assert sdk.outcome("  all fine  ") == ("all fine", "  all fine  ")

    def test_an_explanation(self) -> None:
        assert sdk.outcome(sdk.Explanation("s", "the whole")) == ("s", "the whole")
        assert sdk.outcome(sdk.Explanation("s")) == ("s", "s")

    def test_a_long_summary_is_cut_and_kept_whole_in_the_text(self) -> None:
        long = "x" * 5000
        result = sdk.outcome(long)
        assert isinstance(result, tuple)
        summary, text = result
        assert len(summary) == sdk.MAX_SUMMARY
        assert summary.endswith("…")
        assert text == long

    @pytest.mark.parametrize(
        ("result", "said"),
        [
            ("", "empty summary"),
            ("   \n", "empty summary"),
            (sdk.Explanation(""), "empty summary"),
            (None, "explain returned NoneType, not a str or an Explanation"),
            ({"summary": "x"}, "explain returned dict"),
            (sdk.Explanation(3, "t"), "summary or text is not a str"),  # type: ignore[arg-type]
        ],
    )
    def test_no_explanation_is_said(self, result: Any, said: str) -> None:
        problem = sdk.outcome(result)
        assert isinstance(problem, str)
        assert said in problem

    def test_an_exception_is_its_type_and_message(self) -> None:
        assert sdk.failure(ValueError("no geometry")) == "ValueError: no geometry"
        assert sdk.failure(KeyError()) == "KeyError"
        assert len(sdk.failure(RuntimeError("e" * 9000))) == sdk.MAX_SUMMARY


def test_the_reference_explains_a_blocked_run() -> None:
    run = {
        "run_id": "run_" + "a" * 32,
        "event_type": "feasibility",
        "tool_id": "saw",
        "mode": "rosette",
        "status": "BLOCKED",
        "decision": {"risk_level": "RED", "warnings": ["thin wall"], "block_reason": "depth"},
        "feasibility": {"depth_mm": 3},
    }
    explanation = RuleExplainer().explain(run)
    assert explanation.summary.startswith(f"Run {run['run_id']} (feasibility of saw")
    assert "Warning: thin wall." in (explanation.text or "")
    assert sdk.outcome(explanation) == (explanation.summary, explanation.text)


class TestRun:
    """``run()`` never hangs on a loop that died, nor ends in a traceback."""

    async def test_a_pull_loop_that_fails_ends_the_service(
        self, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        explainer = sdk.Explainer(RuleExplainer(), "nats://127.0.0.1:4222")

        async def broken() -> None:
            raise RuntimeError("consumer deleted")

        async def start() -> None:
            explainer._pulling = asyncio.create_task(broken())

        monkeypatch.setattr(explainer, "start", start)
        assert await asyncio.wait_for(explainer.run(), 5) == Exit.FAILED
        assert "pull loop failed: RuntimeError('consumer deleted')" in caplog.text

    async def test_a_start_that_is_refused_is_one_line(
        self, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        explainer = sdk.Explainer(RuleExplainer(), "nats://127.0.0.1:4222")

        async def start() -> None:
            raise PermissionError("consumer create refused")

        monkeypatch.setattr(explainer, "start", start)
        assert await asyncio.wait_for(explainer.run(), 5) == Exit.FAILED
        assert "cannot start: consumer create refused" in caplog.text
