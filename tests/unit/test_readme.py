"""The README stays true: its two set-up commands, CI, and the settings it documents."""

from __future__ import annotations

from pathlib import Path

from worker.settings import Settings

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
SETUP = "python3 -m venv .venv && .venv/bin/pip install -e '.[dev]' && .venv/bin/"


def commands() -> list[str]:
    return [line.strip() for line in README.splitlines() if line.strip().startswith(SETUP)]


class TestReadme:
    """What a newcomer copies from the README works as written."""

    def test_exactly_two_setup_commands(self) -> None:
        """One command runs the worker, one runs the whole suite."""
        run, test = commands()
        assert run.endswith("rmos-runs worker --explainer --demo")
        assert test.endswith("python -m pytest")

    def test_ci_runs_the_test_command(self) -> None:
        """CI runs the README's test command (with quiet pip and pytest)."""
        test = commands()[1].replace("pip install", "pip install -q") + " -q"
        assert test in (REPO / ".ci" / "run").read_text()

    def test_every_setting_documented(self) -> None:
        """Each environment variable of the settings class has a row in the table."""
        for name in Settings.model_fields:
            assert f"| `RMOS_{name.upper()}` |" in README, name
