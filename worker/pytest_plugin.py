"""The ``rmos_runs`` pytest plugin, installed with the package (entry point ``pytest11``): a
downstream test only asks for the ``rmos_*`` fixtures (``worker.pytest_fixtures``). They are
async, so they need ``pytest-asyncio`` (any mode: ``pip install 'rmos-runs[testing]'``);
without it this plugin registers nothing and says why, and pytest runs as before.
"""

from __future__ import annotations

import importlib
import importlib.util

import pytest


def pytest_configure(config: pytest.Config) -> None:
    if importlib.util.find_spec("pytest_asyncio") is None:
        config.issue_config_time_warning(
            pytest.PytestConfigWarning(
                "rmos_runs: the rmos_* fixtures need pytest-asyncio (pip install "
                "'rmos-runs[testing]'); they are not registered"
            ),
            stacklevel=2,
        )
        return
    config.pluginmanager.register(
        importlib.import_module("worker.pytest_fixtures"), "rmos_runs.fixtures"
    )
