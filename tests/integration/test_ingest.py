"""Ingest against a real nats-server and a real worker process."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import shutil
from pathlib import Path

import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from contracts.api import BlobStored, CreateResult
from contracts.canonical import derive_run_id, sha256_json
from contracts.models import RunArtifact
from tests.support import (
    BOTH_STORES,
    WorkerProcess,
    attached_blob,
    dead_letters,
    event,
    eventually,
    rewrite_stored,
    run_count,
    stored,
    wait_settled,
)
from worker.client import RunsApiError, RunsClient
from worker.core.ingest import content_sha256
from worker.nats_server import NatsServer
from worker.streams import ensure_streams

pytestmark = pytest.mark.integration


@BOTH_STORES
class TestIngest:
    """Events published on the stream become durable artifacts."""

    async def test_event_becomes_artifact(self, worker: WorkerProcess, client: RunsClient) -> None:
        """A valid event is stored, acked, and readable with ``get``."""
        body = event("evt-0001", request={"design": {"rings": 3}, "password": "x"})
        await client.publish_event(body)
        run = await stored(client, derive_run_id("engine-a", "evt-0001"))
        RunArtifact.model_validate(run)
        assert run["hashes"]["event_sha256"] == sha256_json(body)
        assert run["content_sha256"] == content_sha256(run)
        assert run["request_summary"]["keys"] == ["design", "[redacted]"]
        await wait_settled(client.js)
        assert await dead_letters(client.js) == []

    async def test_duplicate_with_new_msg_id(
        self, worker: WorkerProcess, client: RunsClient
    ) -> None:
        """The same event under another Nats-Msg-Id changes nothing and is acked."""
        body = event("evt-dup")
        await client.publish_event(body)
        first = await stored(client, derive_run_id("engine-a", "evt-dup"))
        ack = await client.publish_raw(
            "rmos.runs.v1.events.engine-a", json.dumps(body).encode(), msg_id="other-id"
        )
        assert not ack.duplicate  # JetStream stored it: the worker must recognise it
        await wait_settled(client.js)
        assert await client.get(first["run_id"]) == first
        assert await dead_letters(client.js) == []
        assert await run_count(client, worker.data_dir) == 1

    async def test_run_id_conflict(self, worker: WorkerProcess, client: RunsClient) -> None:
        """Another event claiming a stored run id is dead-lettered; the artifact is untouched."""
        run_id = "run_" + "c" * 32
        await client.publish_event(event("evt-a", run_id=run_id))
        first = await stored(client, run_id)
        await client.publish_event(event("evt-b", run_id=run_id))
        await wait_settled(client.js)
        [(letter, headers)] = await dead_letters(client.js)
        assert letter["code"] == "RUN_ID_CONFLICT"
        assert headers["Nats-Msg-Id"] == f"dlq:RMOS_RUN_EVENTS:{letter['stream_seq']}"
        assert await client.get(run_id) == first

    async def test_every_dead_letter_code(
        self, worker: WorkerProcess, client: RunsClient, tmp_path: Path
    ) -> None:
        """Each kind of bad event lands on ``dlq.<CODE>`` with the contract's body."""
        subject = "rmos.runs.v1.events.engine-a"
        blob = b"gcode G1 X1"
        sha = hashlib.sha256(blob).hexdigest()
        await client.publish_event(event("holder", run_id="run_" + "d" * 32))
        await stored(client, "run_" + "d" * 32)
        cases: dict[str, bytes] = {
            "PAYLOAD_TOO_LARGE": json.dumps(event("big", notes="x" * 600_000)).encode(),
            "INVALID_JSON": b'{"schema": "rmos.run_event.v1", oops',
            "SCHEMA_VIOLATION": json.dumps(event("bad", run_id="../../etc/passwd")).encode(),
            "SOURCE_MISMATCH": json.dumps(event("src", source="engine-b")).encode(),
            "HASH_MISMATCH": json.dumps(
                event("hash", hashes={"feasibility_sha256": "0" * 64})
            ).encode(),
            "UNKNOWN_ATTACHMENT": json.dumps(
                event(
                    "att",
                    attachments=[
                        {
                            "sha256": sha,
                            "kind": "gcode",
                            "mime": "text/plain",
                            "filename": "a.nc",
                            "size_bytes": len(blob),
                        }
                    ],
                )
            ).encode(),
            "RUN_ID_CONFLICT": json.dumps(event("other", run_id="run_" + "d" * 32)).encode(),
        }
        seqs = {}
        for code, payload in cases.items():
            seqs[code] = (await client.publish_raw(subject, payload)).seq
        await wait_settled(client.js)
        letters = {body["code"]: (body, headers) for body, headers in await dead_letters(client.js)}
        assert set(letters) == set(cases)
        for code, payload in cases.items():
            body, headers = letters[code]
            assert body["schema"] == "rmos.dead_letter.v1"
            assert body["original_subject"] == subject
            assert body["stream_seq"] == seqs[code]
            assert body["deliveries"] == 1
            assert body["payload_size"] == len(payload)
            assert body["payload_sha256"] == hashlib.sha256(payload).hexdigest()
            kept = base64.b64decode(body["payload_b64"])
            assert body["payload_truncated"] == (len(payload) > 65536)
            assert payload.startswith(kept)
            assert 0 < len(body["detail"]) <= 4096
            assert headers["Nats-Msg-Id"] == f"dlq:RMOS_RUN_EVENTS:{seqs[code]}"
        assert "run_id" in letters["SCHEMA_VIOLATION"][0]["detail"]
        assert await run_count(client, worker.data_dir) == 1


class TestRedelivery:
    """Transient failures are retried with a delay, then dead-lettered, never dropped."""

    @staticmethod
    def break_scratch(data_dir: Path) -> Path:
        """Make the worker's temp dir (where each commit writes its intent) unwritable in a way
        root cannot ignore: a file in its place."""
        [scratch] = [p for p in (data_dir / "tmp").iterdir() if p.is_dir()]
        shutil.rmtree(scratch)
        scratch.write_text("not a directory")
        return scratch

    async def test_redelivered_after_failure(
        self, nats_server: NatsServer, client: RunsClient, tmp_path: Path
    ) -> None:
        """A failed write is nak'ed, redelivered, and stored once the fault is repaired."""
        data = tmp_path / "data"
        proc = WorkerProcess(nats_server.url, data, env={"RMOS_NAK_BASE_DELAY_S": "0.2"})
        await proc.start(client)
        run_id = derive_run_id("engine-a", "evt-retry")
        scratch = self.break_scratch(data)
        await client.publish_event(event("evt-retry"))

        async def redelivered() -> bool | None:
            info = await client.js.consumer_info("RMOS_RUN_EVENTS", "rmos-worker-events")
            return True if info.num_redelivered > 0 else None

        await eventually(redelivered)
        scratch.unlink()
        scratch.mkdir()
        run = await stored(client, run_id)
        assert run["revision"] == 1
        await wait_settled(client.js)
        assert await dead_letters(client.js) == []
        assert await proc.terminate() == 0

    async def test_max_deliveries(
        self, nats_server: NatsServer, client: RunsClient, tmp_path: Path
    ) -> None:
        """A message failing on every allowed delivery is dead-lettered MAX_DELIVERIES."""
        data = tmp_path / "data"
        env = {"RMOS_MAX_DELIVER": "3", "RMOS_NAK_BASE_DELAY_S": "0.1"}
        proc = WorkerProcess(nats_server.url, data, env=env)
        await proc.start(client)
        self.break_scratch(data)
        await client.publish_event(event("evt-doomed"))
        await wait_settled(client.js)
        [(letter, _)] = await dead_letters(client.js)
        assert letter["code"] == "MAX_DELIVERIES"
        assert letter["deliveries"] == 3
        assert "Not a directory" in letter["detail"] or "NotADirectory" in letter["detail"]
        assert await proc.terminate() == 0

    async def test_one_bad_event_does_not_sink_its_batch(
        self, nats_server: NatsServer, client: RunsClient, tmp_path: Path
    ) -> None:
        """An event whose parent file is corrupt fails alone; its batch neighbours are stored."""
        data = tmp_path / "data"
        env = {"RMOS_MAX_DELIVER": "2", "RMOS_NAK_BASE_DELAY_S": "0.1"}
        proc = WorkerProcess(nats_server.url, data, env=env)
        await proc.start(client)
        parent = await stored(client, (await client.create(event("parent"))).run_id)
        rewrite_stored(data, parent["run_id"], b"{torn")
        await ensure_streams(client.js, client.subjects)
        bodies = [event(f"n-{i}") for i in range(20)]
        bodies.insert(10, event("child", parent_run_id=parent["run_id"]))
        await asyncio.gather(*(client.publish_event(b) for b in bodies))
        await wait_settled(client.js)
        for body in bodies:
            if body["event_id"] != "child":
                await stored(client, derive_run_id("engine-a", body["event_id"]))
        [(letter, _)] = await dead_letters(client.js)
        assert letter["code"] == "MAX_DELIVERIES"
        assert "child" in base64.b64decode(letter["payload_b64"]).decode()
        assert await proc.terminate() == 0


@BOTH_STORES
class TestApi:
    """``get`` and ``create`` answer every request."""

    async def test_create(self, worker: WorkerProcess, client: RunsClient) -> None:
        """``create`` stores once and answers duplicates with the current revision."""
        body = event("evt-api", source="api-client")
        reply = await client.create(body)
        assert reply == CreateResult(
            run_id=derive_run_id("api-client", "evt-api"), revision=1, duplicate=False
        )
        assert (await client.create(body)).duplicate is True
        run = await client.get(reply.run_id)
        assert run["source"] == "api-client"

    async def test_create_refusals_are_replies(
        self, worker: WorkerProcess, client: RunsClient
    ) -> None:
        """A failing ``create`` is answered with the code and not dead-lettered."""
        with pytest.raises(RunsApiError) as info:
            await client.create(event("x", status="PERHAPS"))
        assert info.value.code == "SCHEMA_VIOLATION"
        with pytest.raises(RunsApiError) as info:
            await client.request("create", b"\xff\xfe")
        assert info.value.code == "INVALID_JSON"
        assert await dead_letters(client.js) == []

    @pytest.mark.parametrize(
        ("op", "body", "code"),
        [
            ("get", {"run_id": "run_" + "e" * 32}, "RUN_NOT_FOUND"),
            ("get", {"run_id": "../etc/passwd"}, "INVALID_REQUEST"),
            ("get", {"run_id": "run_" + "e" * 32, "extra": 1}, "INVALID_REQUEST"),
            ("get", b"not json", "INVALID_REQUEST"),
            ("get", b"[]", "INVALID_REQUEST"),
            ("no-such-op", {}, "INVALID_REQUEST"),
        ],
    )
    async def test_bad_requests(
        self,
        worker: WorkerProcess,
        client: RunsClient,
        op: str,
        body: dict[str, object] | bytes,
        code: str,
    ) -> None:
        """A bad request gets an error reply with the contract's code, never silence."""
        with pytest.raises(RunsApiError) as info:
            await client.request(op, body)
        assert info.value.code == code


class TestLifecycle:
    """Start-up and stop as an operator sees them."""

    async def test_sigterm_exits_zero(self, worker: WorkerProcess, client: RunsClient) -> None:
        """SIGTERM stops the worker cleanly with exit code 0 after in-flight work."""
        for i in range(50):
            await client.publish_event(event(f"evt-{i}"))
        assert await worker.terminate() == 0
        assert "Traceback" not in worker.log()

    async def test_consumer_config_reconciled(
        self, nats_server: NatsServer, client: RunsClient, tmp_path: Path
    ) -> None:
        """A durable consumer left with old settings is updated at start-up."""
        await client.js.add_stream(name="RMOS_RUN_EVENTS", subjects=["rmos.runs.v1.events.>"])
        await client.js.add_consumer(
            "RMOS_RUN_EVENTS",
            ConsumerConfig(
                durable_name="rmos-worker-events",
                filter_subject="rmos.runs.v1.events.>",
                ack_policy=AckPolicy.EXPLICIT,
                max_deliver=-1,
                max_ack_pending=50_000,
            ),
        )
        proc = WorkerProcess(nats_server.url, tmp_path / "data", env={"RMOS_MAX_DELIVER": "5"})
        await proc.start(client)
        info = await client.js.consumer_info("RMOS_RUN_EVENTS", "rmos-worker-events")
        assert info.config.max_deliver == 5
        assert info.config.max_ack_pending == 2000
        stream = await client.js.stream_info("RMOS_RUN_EVENTS")
        assert stream.config.duplicate_window == 120
        assert await proc.terminate() == 0


@BOTH_STORES
class TestAttachments:
    """Content-addressed blobs, and events that refer to them."""

    async def test_round_trip(self, worker: WorkerProcess, client: RunsClient) -> None:
        """Bytes put come back byte for byte with their metadata; the same bytes, same answer."""
        blob = bytes(range(256)) * 10
        put = await client.put_attachment(blob, kind="gcode", mime="text/x-gcode", filename="a.nc")
        assert put == BlobStored(sha256=hashlib.sha256(blob).hexdigest(), size_bytes=2560)
        again = await client.put_attachment(blob, kind="other", mime="x/y", filename="b")
        assert again == put
        data, headers = await client.get_attachment(put.sha256)
        assert data == blob
        assert headers["Rmos-Sha256"] == put.sha256
        assert (headers["Rmos-Kind"], headers["Rmos-Mime"], headers["Rmos-Filename"]) == (
            "gcode",
            "text/x-gcode",
            "a.nc",
        )

    async def test_defaults(self, worker: WorkerProcess, client: RunsClient) -> None:
        """CONTRACT section 5: a blob sent without its headers gets the default kind and mime
        and no file name; one header alone is kept with the other defaults."""
        bare = await client.request("attachments.put", b"no headers at all")
        _, headers = await client.get_attachment(bare["sha256"])
        assert (headers["Rmos-Kind"], headers["Rmos-Mime"]) == (
            "unknown",
            "application/octet-stream",
        )
        assert "Rmos-Filename" not in headers
        kind_only = await client.put_attachment(b"only a kind", kind="gcode")
        _, headers = await client.get_attachment(kind_only.sha256)
        assert (headers["Rmos-Kind"], headers["Rmos-Mime"]) == ("gcode", "application/octet-stream")

    async def test_refusals(self, worker: WorkerProcess, client: RunsClient) -> None:
        """Too large, bad metadata and unknown blobs are answered with their codes."""
        with pytest.raises(RunsApiError) as info:
            await client.put_attachment(b"x" * 800_000, kind="k", mime="m", filename="f")
        assert info.value.code == "PAYLOAD_TOO_LARGE"
        with pytest.raises(RunsApiError) as info:
            await client.request("attachments.put", b"abc", {"Rmos-Kind": "k" * 200})
        assert info.value.code == "INVALID_REQUEST"
        assert "kind" in info.value.message
        with pytest.raises(RunsApiError) as info:
            await client.get_attachment("0" * 64)
        assert info.value.code == "BLOB_NOT_FOUND"

    async def test_event_with_attachments(self, worker: WorkerProcess, client: RunsClient) -> None:
        """An event naming a stored blob is accepted; a wrong size is UNKNOWN_ATTACHMENT."""
        blob = b"G21\nG90\nG1 X10 Y10\n"
        ref = await attached_blob(client, blob, "p.nc")
        await client.publish_event(event("with-att", attachments=[ref]))
        run = await stored(client, derive_run_id("engine-a", "with-att"))
        assert run["attachments"] == [ref]
        await client.publish_event(event("bad-size", attachments=[{**ref, "size_bytes": 1}]))
        await wait_settled(client.js)
        [(letter, _)] = await dead_letters(client.js)
        assert letter["code"] == "UNKNOWN_ATTACHMENT"
        assert f"has {len(blob)} bytes" in letter["detail"]
