"""The README's first command: a worker on its own embedded nats-server, fed the demo events."""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support import WorkerProcess, eventually, stored_artifacts
from worker.client import RunsClient

pytestmark = pytest.mark.integration


def port_open(url: str) -> bool:
    parts = urlsplit(url)
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((parts.hostname or "", parts.port or 0)) == 0


class TestEmbeddedServer:
    """With no NATS URL the worker brings its own server, and takes it down on exit."""

    async def test_demo_on_embedded_server(self, tmp_path: Path) -> None:
        """The README's command stores the demo runs, explains four, exits 0 on SIGTERM."""
        data = tmp_path / "data"
        proc = WorkerProcess(None, data)
        await proc.start(None, 30.0, "--explainer", "--demo")
        url_file = data / "nats" / "url"

        async def five_runs() -> bool | None:
            return True if len(stored_artifacts(data)) == 5 else None

        await eventually(five_runs, timeout=60)
        url = url_file.read_text().strip()
        async with await RunsClient.connect(url) as client:
            runs = [await client.get(run_id) for run_id in stored_artifacts(data)]
        by_event = {run["event_id"]: run for run in runs}
        assert by_event["demo-guarded"]["status"] == "BLOCKED"
        assert by_event["demo-guarded"]["meta"]["guard"]["claimed_status"] == "OK"
        assert by_event["demo-child"]["drift_detected"] is True

        async def explained() -> bool | None:  # the guarded, blocked, error and child runs
            async with await RunsClient.connect(url) as c:
                runs = [await c.get(run_id) for run_id in stored_artifacts(data)]
            statuses = sorted(r["explanation_status"] for r in runs)
            return True if statuses == ["NONE", "READY", "READY", "READY", "READY"] else None

        await eventually(explained, timeout=30)
        assert all(b"never-stored" not in data for data in stored_artifacts(data).values())
        assert await proc.terminate() == 0
        assert not url_file.exists()
        assert not port_open(url), "the embedded server outlived the worker"
        assert (data / "nats" / "jetstream").is_dir()
