"""The explanation lifecycle against a real nats-server, with a hand-written explainer."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from nats.js import JetStreamContext

from contracts.canonical import derive_run_id
from tests.faults.crashing_worker import CRASHED
from tests.support import BOTH_STORES, ROOT, WorkerProcess, dead_letters, event, eventually, stored
from worker.client import RunsApiError, RunsClient
from worker.nats_server import NatsServer

pytestmark = pytest.mark.integration
EXPLAIN = "rmos.runs.v1.explain"


async def explain_messages(js: JetStreamContext, kind: str) -> list[tuple[dict[str, Any], str]]:
    """(body, Nats-Msg-Id) of every message on ``explain.<kind>...``, oldest first."""
    info = await js.stream_info("RMOS_EXPLAIN")
    out: list[tuple[dict[str, Any], str]] = []
    if not info.state.messages:
        return out
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg("RMOS_EXPLAIN", seq)
        if (msg.subject or "").startswith(f"{EXPLAIN}.{kind}"):
            out.append((json.loads(msg.data or b"{}"), (msg.headers or {}).get("Nats-Msg-Id", "")))
    return out


async def explain_count(
    js: JetStreamContext, kind: str, count: int
) -> list[tuple[dict[str, Any], str]]:
    """The messages of ``kind`` once at least ``count`` (they are sent after the write)."""

    async def probe() -> list[tuple[dict[str, Any], str]] | None:
        found = await explain_messages(js, kind)
        return found if len(found) >= count else None

    return await eventually(probe)


async def send_patch(client: RunsClient, run_id: str, request_id: str, **fields: Any) -> None:
    body = {
        "schema": "rmos.explanation_patch.v1",
        "run_id": run_id,
        "request_id": request_id,
        "explainer_id": "test-explainer",
        "status": "READY",
        "summary": "the wall is thinner than the bit",
        **fields,
    }
    subject = f"{EXPLAIN}.patch.{fields.get('subject_run_id', run_id)}"
    body.pop("subject_run_id", None)
    # a fresh message id each time: the worker, not JetStream's dedup, must meet the repeats
    await client.publish_raw(subject, json.dumps(body).encode(), msg_id=uuid.uuid4().hex)


async def run_at(client: RunsClient, run_id: str, **expected: Any) -> dict[str, Any]:
    """The run once every expected field has its value."""

    async def probe() -> dict[str, Any] | None:
        try:
            run = await client.get(run_id)
        except RunsApiError as exc:
            if exc.code != "RUN_NOT_FOUND":
                raise
            return None
        return run if all(run.get(k) == v for k, v in expected.items()) else None

    return await eventually(probe, timeout=20)


async def blocked_run(client: RunsClient, event_id: str = "blk") -> dict[str, Any]:
    body = event(event_id, status="BLOCKED", decision={"risk_level": "RED"})
    await client.publish_event(body)
    return await stored(client, derive_run_id("engine-a", event_id))


@BOTH_STORES
class TestLifecycle:
    """NONE → PENDING → READY | ERROR, never backwards for late or repeated messages."""

    async def test_request_then_ready(self, worker: WorkerProcess, client: RunsClient) -> None:
        """A blocked run is requested at creation; a matching patch makes it READY, once."""
        run = await blocked_run(client)
        assert (run["explanation_status"], run["revision"]) == ("PENDING", 1)
        request_id = run["explanation_request_id"]
        [(request, request_msg_id)] = await explain_count(client.js, "requested", 1)
        assert request["request_id"] == request_msg_id == request_id
        assert request["run"]["run_id"] == run["run_id"]
        advisory = {
            "advisory_id": "adv-1",
            "kind": "explanation",
            "created_at_utc": "2026-11-24T10:00:00.000000+00:00",
            "sha256": "a" * 64,
        }
        await send_patch(client, run["run_id"], request_id, advisory=advisory)
        ready = await run_at(client, run["run_id"], explanation_status="READY")
        assert ready["revision"] == 2
        assert ready["explanation_summary"] == "the wall is thinner than the bit"
        assert [a["advisory_id"] for a in ready["advisory_inputs"]] == ["adv-1"]
        assert ready["content_sha256"] == run["content_sha256"]
        await send_patch(client, run["run_id"], request_id, advisory=advisory, explainer_id="x2")
        await send_patch(client, run["run_id"], "req_other_9")  # stale: another request

        async def stale_counted() -> bool | None:  # patches are applied in order: both are done
            return True if "rmos_explain_patches_ignored_total=1" in worker.log() else None

        await eventually(stale_counted)
        assert await client.get(run["run_id"]) == ready
        statuses = await explain_count(client.js, "status", 2)
        assert [(b["from"], b["to"], m) for b, m in statuses] == [
            ("NONE", "PENDING", f"{run['run_id']}:r1"),
            ("PENDING", "READY", f"{run['run_id']}:r2"),
        ]
        history = await client.history(run["run_id"])
        assert [r.change for r in history.revisions] == ["created", "explanation"]

    async def test_advisory_with_only_its_id(
        self, worker: WorkerProcess, client: RunsClient
    ) -> None:
        """CONTRACT section 4: an advisory needs only ``advisory_id``; the worker completes it."""
        run = await blocked_run(client)
        await send_patch(
            client, run["run_id"], run["explanation_request_id"], advisory={"advisory_id": "a-9"}
        )
        ready = await run_at(client, run["run_id"], explanation_status="READY")
        [entry] = ready["advisory_inputs"]
        assert (entry["advisory_id"], entry["kind"]) == ("a-9", "unknown")
        # set as the patch was applied: after the run was stored, by the revision's change
        assert run["recorded_at_utc"] < entry["created_at_utc"] <= ready["updated_at_utc"]
        assert await dead_letters(client.js) == []
        assert (await client.verify(run["run_id"])).valid

    async def test_invalid_patches(self, worker: WorkerProcess, client: RunsClient) -> None:
        """Malformed, unknown-run and mismatched patches are dead-lettered INVALID_PATCH."""
        run = await blocked_run(client)
        request_id = run["explanation_request_id"]
        await send_patch(client, run["run_id"], request_id, summary=None)
        await send_patch(client, "run_" + "1" * 32, request_id)
        await send_patch(client, run["run_id"], request_id, subject_run_id="run_" + "2" * 32)
        await client.publish_raw(f"{EXPLAIN}.patch.{run['run_id']}", b"{not json")

        async def four() -> list[Any] | None:
            letters = await dead_letters(client.js)
            return letters if len(letters) == 4 else None

        letters = await eventually(four)
        assert {body["code"] for body, _ in letters} == {"INVALID_PATCH"}
        assert (await client.get(run["run_id"]))["explanation_status"] == "PENDING"

    async def test_explain_api_and_force(self, worker: WorkerProcess, client: RunsClient) -> None:
        """explain requests on NONE, answers PENDING as it is, and forces a new request."""
        await client.publish_event(event("ok-run"))
        run = await stored(client, derive_run_id("engine-a", "ok-run"))
        assert run["explanation_status"] == "NONE"
        first = await client.explain(run["run_id"])
        assert first.explanation_status == "PENDING"
        again = await client.explain(run["run_id"])
        assert again.request_id == first.request_id
        await send_patch(client, run["run_id"], str(first.request_id))
        await run_at(client, run["run_id"], explanation_status="READY")
        forced = await client.explain(run["run_id"], force=True)
        assert forced.explanation_status == "PENDING"
        assert forced.request_id != first.request_id
        await send_patch(client, run["run_id"], str(first.request_id), summary="late")
        await send_patch(client, run["run_id"], str(forced.request_id), summary="fresh")
        final = await run_at(client, run["run_id"], explanation_summary="fresh")
        assert final["explanation_attempts"] == 1
        requests = [b["request_id"] for b, _ in await explain_count(client.js, "requested", 2)]
        assert requests == [first.request_id, forced.request_id]


class TestDeadlinesAndCrashes:
    """Requests are retried past the deadline and survive a crash before they are sent."""

    @BOTH_STORES
    async def test_deadline(
        self, nats_server: NatsServer, client: RunsClient, tmp_path: Path
    ) -> None:
        """Unanswered, a run is re-requested up to the attempt limit, then ERROR timed out."""
        env = {"RMOS_EXPLAIN_TIMEOUT_S": "0.6", "RMOS_EXPLAIN_MAX_ATTEMPTS": "2"}
        proc = WorkerProcess(nats_server.url, tmp_path / "data", env=env)
        await proc.start(client)
        run = await blocked_run(client)
        failed = await run_at(client, run["run_id"], explanation_status="ERROR")
        assert failed["explanation_error"] == "timed out"
        assert failed["explanation_attempts"] == 2
        statuses = [(b["from"], b["to"]) for b, _ in await explain_count(client.js, "status", 3)]
        assert statuses == [("NONE", "PENDING"), ("PENDING", "PENDING"), ("PENDING", "ERROR")]
        assert len(await explain_count(client.js, "requested", 2)) == 2
        assert await proc.terminate() == 0

    async def test_crash_before_request(
        self, nats_server: NatsServer, client: RunsClient, tmp_path: Path
    ) -> None:
        """kill -9 between storing PENDING and publishing: the restart sends the request."""
        data = tmp_path / "data"
        crashing = WorkerProcess(
            nats_server.url,
            data,
            env={"CRASH_AT": "before_request", "RMOS_ACK_WAIT_S": "2"},
            module="tests.faults.crashing_worker",
            cwd=ROOT,
        )
        await crashing.start(client)
        await client.publish_event(event("blk", status="BLOCKED"))
        assert crashing.proc is not None
        assert await asyncio.wait_for(crashing.proc.wait(), 30) == CRASHED
        assert await explain_messages(client.js, "requested") == []
        proc = WorkerProcess(nats_server.url, data, env={"RMOS_ACK_WAIT_S": "2"})
        await proc.start(client)
        run_id = derive_run_id("engine-a", "blk")
        [(request, _)] = await explain_count(client.js, "requested", 1)
        assert request["run_id"] == run_id
        assert request["request_id"] == (await client.get(run_id))["explanation_request_id"]
        assert await proc.terminate() == 0


@BOTH_STORES
class TestReferenceExplainer:
    """The full loop: worker, two reference explainer processes, a stream of runs."""

    async def test_full_loop(
        self, worker: WorkerProcess, client: RunsClient, nats_server: NatsServer, tmp_path: Path
    ) -> None:
        """Every run needing it is explained READY, with its full text stored and verifiable."""
        command = [sys.executable, "-m", "worker.cli", "explainer", "--nats-url", nats_server.url]
        explainers = [
            await asyncio.create_subprocess_exec(
                *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
            )
            for _ in range(2)
        ]
        try:
            ids = []
            for i in range(20):
                body = event(f"r{i}", status="BLOCKED" if i % 2 else "OK")
                await client.publish_event(body)
                ids.append(derive_run_id("engine-a", f"r{i}"))
            runs = [
                await run_at(client, run_id, explanation_status="READY") for run_id in ids[1::2]
            ]
        finally:
            for proc in explainers:
                proc.terminate()
                await proc.wait()
        for run in runs:
            [advisory] = run["advisory_inputs"]
            text, headers = await client.get_attachment(advisory["sha256"])
            assert run["run_id"] in text.decode()
            assert headers["Rmos-Kind"] == "explanation"
            assert (await client.verify(run["run_id"])).valid
        for run_id in ids[0::2]:  # OK and GREEN: no explanation
            assert (await client.get(run_id))["explanation_status"] == "NONE"
