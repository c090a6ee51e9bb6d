"""``patch_meta`` and ``history``: compare-and-swap on revision, across tasks and processes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from contracts.canonical import derive_run_id
from tests.support import BOTH_STORES, WorkerProcess, event, stored
from worker.client import RunsApiError, RunsClient
from worker.nats_server import NatsServer

pytestmark = pytest.mark.integration


async def a_run(client: RunsClient, event_id: str = "evt-meta", **fields: Any) -> dict[str, Any]:
    await client.publish_event(event(event_id, meta={"owner": "shop-a"}, **fields))
    return await stored(client, derive_run_id("engine-a", event_id))


@BOTH_STORES
class TestPatchMeta:
    """Meta changes are revisions; the immutable core never moves."""

    async def test_set_and_remove(self, worker: WorkerProcess, client: RunsClient) -> None:
        """A value sets a key, null removes it, each accepted change is one revision."""
        run = await a_run(client)
        first = await client.patch_meta(run["run_id"], {"ticket": "RMOS-1", "reviewed": True})
        assert first.revision == 2
        assert first.meta == {"owner": "shop-a", "ticket": "RMOS-1", "reviewed": True}
        second = await client.patch_meta(run["run_id"], {"owner": None}, expected_revision=2)
        assert (second.revision, second.meta) == (3, {"ticket": "RMOS-1", "reviewed": True})
        again = await client.patch_meta(run["run_id"], {"owner": None})
        assert again.revision == 3  # nothing changed: no new revision
        now = await client.get(run["run_id"])
        assert now["content_sha256"] == run["content_sha256"]
        assert (await client.verify(run["run_id"])).valid is True

    async def test_guard_untouchable(self, worker: WorkerProcess, client: RunsClient) -> None:
        """``meta.guard`` can never be changed or removed."""
        run = await a_run(client, decision={"risk_level": "RED"})
        assert run["meta"]["guard"]["violations"] == ["RISK_LEVEL_RED"]
        for value in (None, {"claimed_status": "BLOCKED"}):
            with pytest.raises(RunsApiError) as info:
                await client.patch_meta(run["run_id"], {"guard": value})
            assert info.value.code == "INVALID_REQUEST"
        assert (await client.get(run["run_id"]))["meta"]["guard"] == run["meta"]["guard"]

    @pytest.mark.parametrize(
        ("body", "code"),
        [
            ({"meta_updates": {}}, "INVALID_REQUEST"),
            ({"meta_updates": {"x": 1}, "expected_revision": 0}, "INVALID_REQUEST"),
            ({"meta_updates": {"x": 2**60}}, "INVALID_REQUEST"),
            ({"meta_updates": {"x": 1}, "status": "OK"}, "INVALID_REQUEST"),
            ({"meta_updates": {"x": 1}, "expected_revision": 7}, "REVISION_CONFLICT"),
        ],
    )
    async def test_refusals(
        self, worker: WorkerProcess, client: RunsClient, body: dict[str, Any], code: str
    ) -> None:
        """Empty, core-reaching, non-canonical or stale patches are refused with a code."""
        run = await a_run(client)
        with pytest.raises(RunsApiError) as info:
            await client.request("patch_meta", {"run_id": run["run_id"], **body})
        assert info.value.code == code
        assert (await client.get(run["run_id"]))["revision"] == 1

    async def test_unknown_run(self, worker: WorkerProcess, client: RunsClient) -> None:
        """Patching a run that does not exist is RUN_NOT_FOUND."""
        with pytest.raises(RunsApiError) as info:
            await client.patch_meta("run_" + "7" * 32, {"x": 1})
        assert info.value.code == "RUN_NOT_FOUND"

    async def test_history(self, worker: WorkerProcess, client: RunsClient) -> None:
        """History lists every revision, oldest first, with what changed and why."""
        run = await a_run(client)
        await client.patch_meta(run["run_id"], {"ticket": "RMOS-1"})
        await client.patch_meta(run["run_id"], {"ticket": None, "owner": "shop-b"})
        history = await client.history(run["run_id"])
        assert [(r.revision, r.change) for r in history.revisions] == [
            (1, "created"),
            (2, "meta"),
            (3, "meta"),
        ]
        assert history.revisions[0].by == "event engine-a:evt-meta"
        assert history.revisions[1].changed == ["meta.ticket"]
        assert history.revisions[2].changed == ["meta.owner", "meta.ticket"]


class TestConcurrency:
    """No lost update, whoever the writers are."""

    @BOTH_STORES
    async def test_fifty_concurrent_patches(
        self, worker: WorkerProcess, client: RunsClient
    ) -> None:
        """50 concurrent patch_meta calls on one run: every key lands, 50 new revisions."""
        run = await a_run(client)
        await asyncio.gather(*(client.patch_meta(run["run_id"], {f"k{i}": i}) for i in range(50)))
        final = await client.get(run["run_id"])
        assert final["revision"] == 51
        assert {k: v for k, v in final["meta"].items() if k != "owner"} == {
            f"k{i}": i for i in range(50)
        }
        assert [r.revision for r in (await client.history(run["run_id"])).revisions] == list(
            range(1, 52)
        )

    @BOTH_STORES
    async def test_compare_and_swap_race(self, worker: WorkerProcess, client: RunsClient) -> None:
        """Ten writers expecting revision 1: exactly one wins, the others get a conflict."""
        run = await a_run(client)
        results = await asyncio.gather(
            *(client.patch_meta(run["run_id"], {"winner": i}, 1) for i in range(10)),
            return_exceptions=True,
        )
        conflicts = [r for r in results if isinstance(r, RunsApiError)]
        assert len(conflicts) == 9
        assert {c.code for c in conflicts} == {"REVISION_CONFLICT"}

    async def test_two_worker_processes(
        self, nats_server: NatsServer, client: RunsClient, tmp_path: Path
    ) -> None:
        """Two workers sharing one data dir both answer patch_meta; no update is lost."""
        data = tmp_path / "data"
        workers = [WorkerProcess(nats_server.url, data) for _ in range(2)]
        for proc in workers:
            await proc.start(client)
        run = await a_run(client)
        await asyncio.gather(*(client.patch_meta(run["run_id"], {f"k{i}": i}) for i in range(50)))
        final = await client.get(run["run_id"])
        assert final["revision"] == 51
        assert len(final["meta"]) == 51
        assert await asyncio.gather(*(p.terminate() for p in workers)) == [0, 0]
        assert all("Traceback" not in proc.log() for proc in workers)
