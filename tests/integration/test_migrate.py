"""``rmos-runs migrate``: a files data dir moved into the jetstream store of a 3-node cluster."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from contracts.api import VerifyReport
from contracts.canonical import derive_run_id
from tests.support import (
    ROOT,
    WorkerProcess,
    attached_blob,
    event,
    eventually,
    rewrite_stored,
    stored,
    stored_artifacts,
    wait_settled,
)
from worker.client import RunsApiError, RunsClient
from worker.core.ingest import content_sha256
from worker.nats_cluster import NatsCluster
from worker.store.revisions import encode

pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("store", ["jetstream"], indirect=True),
]


async def migrate(url: str, data: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker.cli", "migrate", "--nats-url", url, "--data-dir", str(data),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode() + err.decode()


async def answers(client: RunsClient, run_ids: list[str]) -> dict[str, Any]:
    """What every operation answers; ``list`` once the worker's index is built (a fresh
    jetstream worker answers UNAVAILABLE until then, CONTRACT section 8)."""

    async def listed() -> list[dict[str, Any]] | None:
        try:
            return [s.model_dump() async for s in client.iter_runs(page_size=100)]
        except RunsApiError as exc:
            if exc.code != "UNAVAILABLE":
                raise
            return None

    return {
        "get": [await client.get(r) for r in run_ids],
        "history": [(await client.history(r)).model_dump() for r in run_ids],
        "verify": [same_wherever(await client.verify(r)) for r in run_ids],
        "list": await eventually(listed),
    }


def same_wherever(report: VerifyReport) -> dict[str, Any]:
    """A verify reply without what depends on the log it is in (a migrated run's leaves are
    the same records in another tree: position, proof and checkpoint differ)."""
    reply = report.model_dump()
    if reply["log"] is not None:
        reply["log"] = {k: reply["log"][k] for k in ("leaf", "leaf_hash")}
    return reply


class TestMigrate:
    """Everything a files worker stored is served the same by a jetstream worker."""

    async def test_copy_again_and_conflict(
        self, nats_server: NatsCluster, client: RunsClient, tmp_path: Path
    ) -> None:
        data = tmp_path / "files"
        files = WorkerProcess(nats_server.url, data)
        await files.start(client)
        blob = await attached_blob(client, b"G1 X1\n" * 100)
        bodies = [event(f"m-{i}") for i in range(30)]
        bodies[0]["attachments"] = [blob]
        bodies[1].update(status="BLOCKED", decision={"risk_level": "RED"})  # PENDING
        await asyncio.gather(*(client.publish_event(b) for b in bodies))
        run_ids = [derive_run_id("engine-a", b["event_id"]) for b in bodies]
        for run_id in run_ids:
            await stored(client, run_id)
        await wait_settled(client.js)
        for n in range(3):
            await client.patch_meta(run_ids[2], {"step": n})
        before = await answers(client, run_ids)
        assert await files.terminate() == 0

        code, out = await migrate(nats_server.url, data)
        assert code == 0, out
        expected = "30 runs copied, 0 already present, 0 conflicts; 1 blobs; 0 problems"
        assert expected in out
        code, out = await migrate(nats_server.url, data)
        assert (code, "0 runs copied, 30 already present" in out) == (0, True), out

        jetstream = WorkerProcess(nats_server.url, tmp_path / "js", env={"RMOS_STORE": "jetstream"})
        await jetstream.start(client)
        assert await answers(client, run_ids) == before
        assert all(report["valid"] for report in before["verify"])

        # Another run under one of the same ids in the data dir: refused, reported, exit 1.
        other = {**json.loads(stored_artifacts(data)[run_ids[5]]), "notes": "another run"}
        other["content_sha256"] = content_sha256(other)
        rewrite_stored(data, run_ids[5], encode(other))
        code, out = await migrate(nats_server.url, data)
        assert code == 1
        assert "1 conflicts" in out
        assert f"run {run_ids[5]}: the jetstream store holds another run of this id" in out
        assert await client.get(run_ids[5]) == before["get"][5]
