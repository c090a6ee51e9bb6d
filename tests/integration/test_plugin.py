"""The ``rmos_runs`` pytest plugin as a downstream team uses it: a test file that knows only its
fixtures and ``worker.testing``, run by ``pytester`` in a pytest of its own (strict asyncio
mode, no configuration of ours)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

DOWNSTREAM = """
import os

import pytest

from worker.testing import run_id_of, wait_for_explanation, wait_for_run

PIDS = os.environ["RMOS_PLUGIN_PIDS"]


@pytest.mark.asyncio
async def test_a_blocked_run_waits_for_an_explainer(rmos_worker, rmos_client, rmos_event):
    with open(PIDS, "a") as pids:
        print(rmos_worker.proc.pid, file=pids)
    event = rmos_event(status="BLOCKED", decision={"risk_level": "RED", "score": 12})
    await rmos_client.publish_event(event)
    run = await wait_for_run(rmos_client, run_id_of(event))
    assert run["status"] == "BLOCKED"
    assert run["decision"]["risk_level"] == "RED"
    pending = await wait_for_explanation(rmos_client, run["run_id"], "PENDING")
    assert pending["explanation_status"] == "PENDING"
    assert (rmos_worker.data_dir / "segments").is_dir()


@pytest.mark.asyncio
async def test_each_test_has_its_own_worker(rmos_worker, rmos_client, rmos_event):
    with open(PIDS, "a") as pids:
        print(rmos_worker.proc.pid, file=pids)
    assert (await rmos_client.list_page()).items == []  # nothing from the test before
    first, second = rmos_event(), rmos_event(source="engine-b", status="ERROR")
    assert first["event_id"] != second["event_id"]
    for event in (first, second):
        await rmos_client.publish_event(event)
    for event in (first, second):
        await wait_for_run(rmos_client, run_id_of(event))


@pytest.mark.asyncio
async def test_a_run_that_never_comes(rmos_worker, rmos_client):
    with pytest.raises(TimeoutError):
        await wait_for_run(rmos_client, "run_" + "f" * 32, timeout=0.5)


def test_the_event_factory(rmos_event):
    event = rmos_event(tool_id="router-3mm", feasibility=None)
    assert event["tool_id"] == "router-3mm"
    assert "feasibility" not in event
    assert event["schema"] == "rmos.run_event.v1"


def explain(run):
    if run["decision"]["risk_level"] == "RED":
        raise ValueError("red needs a human")
    return f"{run['tool_id']} is fine"


@pytest.mark.asyncio
async def test_an_explainer_team_tests_its_function(
    rmos_worker, rmos_client, rmos_event, rmos_explainer
):
    await rmos_explainer(explain, concurrency=2)
    yellow = rmos_event(status="BLOCKED", decision={"risk_level": "YELLOW"})
    red = rmos_event(status="BLOCKED", decision={"risk_level": "RED"})
    for event in (yellow, red):
        await rmos_client.publish_event(event)
    ready = await wait_for_explanation(rmos_client, run_id_of(yellow), "READY")
    assert ready["explanation_summary"] == "saw-0.8mm is fine"
    failed = await wait_for_explanation(rmos_client, run_id_of(red), "ERROR")
    assert failed["explanation_error"] == "ValueError: red needs a human"
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@pytest.mark.timeout(300)
def test_a_downstream_test_file(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every downstream test passes with only the plugin's fixtures; each had a worker of its
    own, and none is left running."""
    pids = tmp_path / "pids"
    pytester.makepyfile(test_downstream=DOWNSTREAM)
    monkeypatch.setenv("RMOS_PLUGIN_PIDS", str(pids))
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", timeout=240)
    result.assert_outcomes(passed=5)
    started = [int(line) for line in pids.read_text().split()]
    assert len(set(started)) == 2
    assert not [pid for pid in started if _alive(pid)]
