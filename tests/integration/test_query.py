"""``diff`` and ``verify`` over request–reply, against tampering on disk."""

from __future__ import annotations

from typing import Any

import pytest

from contracts.canonical import derive_run_id
from tests.support import BOTH_STORES, WorkerProcess, attached_blob, event, stored, tamper
from worker.client import RunsApiError, RunsClient

pytestmark = pytest.mark.integration


async def publish(client: RunsClient, event_id: str, **fields: Any) -> dict[str, object]:
    await client.publish_event(event(event_id, **fields))
    return await stored(client, derive_run_id("engine-a", event_id))


@BOTH_STORES
class TestDiff:
    """Changes between runs, with the contract's severity."""

    async def test_severities(self, worker: WorkerProcess, client: RunsClient) -> None:
        """Status is CRITICAL, score is WARNING, notes are INFO, same content is INFO and empty."""
        base = await publish(client, "base", notes="a")
        twin = await publish(client, "twin", notes="a")
        noted = await publish(client, "noted", notes="b")
        scored = await publish(
            client, "scored", notes="a", decision={"risk_level": "GREEN", "score": 40}
        )
        failed = await publish(client, "failed", notes="a", status="ERROR")
        same = await client.diff(str(base["run_id"]), str(twin["run_id"]))
        assert (same.severity, same.changes) == ("INFO", [])
        info = await client.diff(str(base["run_id"]), str(noted["run_id"]))
        assert [c.model_dump() for c in info.changes] == [{"path": "notes", "a": "a", "b": "b"}]
        warning = await client.diff(str(base["run_id"]), str(scored["run_id"]))
        assert warning.severity == "WARNING"
        assert warning.changed_paths == ["decision.score"]
        critical = await client.diff(str(base["run_id"]), str(failed["run_id"]))
        assert critical.severity == "CRITICAL"
        assert critical.a == base["run_id"]

    async def test_unknown_run(self, worker: WorkerProcess, client: RunsClient) -> None:
        """Diffing against a run that does not exist is RUN_NOT_FOUND."""
        base = await publish(client, "base")
        with pytest.raises(RunsApiError) as info:
            await client.diff(str(base["run_id"]), "run_" + "9" * 32)
        assert info.value.code == "RUN_NOT_FOUND"


class TestVerify:
    """Every hash is recomputed from the bytes on disk; one changed byte is caught."""

    async def attached(self, client: RunsClient) -> tuple[dict[str, object], str]:
        ref = await attached_blob(client, b"G21 G90 G1 X1")
        return await publish(client, "att", attachments=[ref]), ref["sha256"]

    @BOTH_STORES
    async def test_valid(self, worker: WorkerProcess, client: RunsClient) -> None:
        """An untouched run passes every check, attachments included."""
        run, _ = await self.attached(client)
        report = await client.verify(str(run["run_id"]))
        assert report.valid is True
        names = [c.name for c in report.checks]
        assert names == [
            "run_id",
            "content_sha256",
            "feasibility_sha256",
            "attachments.0.sha256",
            "attachments.0.size_bytes",
            "log.revisions",
            "log.artifact",
            "log.history",
        ]

    @BOTH_STORES
    @pytest.mark.parametrize(
        ("old", "new"),
        [(b'"notes":"x"', b'"notes":"y"'), (b'"max_depth_mm":1.2', b'"max_depth_mm":1.3')],
    )
    async def test_artifact_byte_changed(
        self, worker: WorkerProcess, client: RunsClient, old: bytes, new: bytes
    ) -> None:
        """A one-byte change in the stored artifact makes the run invalid."""
        run = await publish(client, "t", notes="x")

        def change(data: bytes) -> bytes:
            assert old in data
            return data.replace(old, new)

        await tamper(client, worker.data_dir, str(run["run_id"]), change)
        report = await client.verify(str(run["run_id"]))
        assert report.valid is False
        failed = {c.name for c in report.checks if not c.ok}
        assert "content_sha256" in failed

    async def test_blob_byte_changed(self, worker: WorkerProcess, client: RunsClient) -> None:
        """A one-byte change in an attachment's blob makes the run invalid."""
        run, sha = await self.attached(client)
        blob = worker.data_dir / "blobs" / sha[:2] / sha
        blob.write_bytes(blob.read_bytes().replace(b"X1", b"X2"))
        report = await client.verify(str(run["run_id"]))
        assert report.valid is False
        assert [c.name for c in report.checks if not c.ok] == ["attachments.0.sha256"]

    @BOTH_STORES
    async def test_not_json_any_more(self, worker: WorkerProcess, client: RunsClient) -> None:
        """Stored bytes that no longer parse are reported invalid, not an internal error."""
        run = await publish(client, "t")
        await tamper(client, worker.data_dir, str(run["run_id"]), lambda data: data[:-1])
        report = await client.verify(str(run["run_id"]))
        assert report.valid is False
        assert report.checks[0].name == "artifact"

    @BOTH_STORES
    async def test_unknown_run(self, worker: WorkerProcess, client: RunsClient) -> None:
        """Verifying a run that does not exist is RUN_NOT_FOUND."""
        with pytest.raises(RunsApiError) as info:
            await client.verify("run_" + "9" * 32)
        assert info.value.code == "RUN_NOT_FOUND"
