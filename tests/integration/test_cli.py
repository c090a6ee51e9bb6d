"""The operator CLI as an operator runs it: a subprocess against a real server and worker."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from contracts.canonical import derive_run_id
from tests.support import (
    BOTH_STORES,
    ROOT,
    WorkerProcess,
    dead_letters,
    event,
    stored,
    tamper,
    wait_settled,
)
from worker.client import RunsClient
from worker.nats_server import NatsServer
from worker.output import Exit
from worker.runner import url_file

pytestmark = pytest.mark.integration
CLI_TIMEOUT = 90.0  # generous: a benchmark may share the machine


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.splitlines() if line.strip()]

    def assert_clean_failure(self, code: Exit = Exit.API_ERROR) -> None:
        """Exit ``code`` with one readable line, never a traceback."""
        assert self.code == code, (self.out, self.err)
        assert "Traceback" not in self.err
        assert self.err.startswith("error")


async def cli(*args: str, url: str | None = None) -> Result:
    """``rmos-runs ARGS`` (``--nats-url url`` appended when given), with RMOS_NATS_URL unset."""
    env = {k: v for k, v in os.environ.items() if k not in {"RMOS_NATS_URL", "RMOS_DATA_DIR"}}
    flags = ["--nats-url", url] if url else []
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker.cli", *args, *flags,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL, env=env, cwd=ROOT,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


async def publish(client: RunsClient, event_id: str, **fields: Any) -> str:
    await client.publish_event(event(event_id, **fields))
    run_id = derive_run_id("engine-a", event_id)
    await stored(client, run_id)
    return run_id


def block(text: str) -> dict[str, str]:
    """A ``key: value`` block as a dict."""
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in pairs}


@BOTH_STORES
class TestGet:
    """``get RUN_ID``: the artifact as a key: value block, or as JSON."""

    async def test_block_and_json(
        self, worker: WorkerProcess, client: RunsClient, nats_server: NatsServer
    ) -> None:
        run_id = await publish(client, "g1", notes="hello")
        table = await cli("get", run_id, url=nats_server.url)
        assert table.code == 0, table.err
        shown = block(table.out)
        assert shown["run_id"] == run_id
        assert shown["decision.risk_level"] == "GREEN"
        assert shown["notes"] == "hello"
        as_json = await cli("get", run_id, "--json", url=nats_server.url)
        assert as_json.code == 0, as_json.err
        assert as_json.json_lines() == [await client.get(run_id)]

    async def test_not_found(self, worker: WorkerProcess, nats_server: NatsServer) -> None:
        """An API error is ``error CODE: message`` and exit 3."""
        result = await cli("get", "run_" + "9" * 32, url=nats_server.url)
        result.assert_clean_failure()
        assert result.err.startswith("error RUN_NOT_FOUND: ")
        assert result.out == ""

    async def test_invalid_request(self, worker: WorkerProcess, nats_server: NatsServer) -> None:
        result = await cli("get", "../../etc/passwd", "--json", url=nats_server.url)
        result.assert_clean_failure()
        assert result.err.startswith("error INVALID_REQUEST: ")


@BOTH_STORES
class TestList:
    """``list``: every filter of the contract, one page or all of them."""

    async def test_filters_pages_and_formats(
        self, worker: WorkerProcess, client: RunsClient, nats_server: NatsServer
    ) -> None:
        first = await publish(client, "l1", tool_id="saw-1", material_id="maple")
        second = await publish(client, "l2", tool_id="saw-2", status="ERROR")
        third = await publish(client, "l3", tool_id="drill-1", machine_id="m-7")
        url = nats_server.url
        newest_first = [item.run_id for item in (await client.list_page()).items]
        assert set(newest_first) == {first, second, third}

        table = await cli("list", url=url)
        assert table.code == 0, table.err
        lines = table.out.splitlines()
        assert lines[0].split()[:3] == ["RUN_ID", "CREATED_AT_UTC", "STATUS"]
        assert [line.split()[0] for line in lines[1:]] == newest_first

        as_json = await cli("list", "--json", url=url)
        assert as_json.json_lines() == [i.model_dump() for i in (await client.list_page()).items]

        for flags, expected in [
            (["--status", "ERROR"], [second]),
            (["--tool-id-prefix", "saw-"], [r for r in newest_first if r != third]),
            (["--material-id", "maple"], [first]),
            (["--machine-id", "m-7", "--tool-id", "drill-1"], [third]),
            (["--source", "engine-b"], []),
        ]:
            result = await cli("list", "--json", *flags, url=url)
            assert result.code == 0, (flags, result.err)
            assert [item["run_id"] for item in result.json_lines()] == expected, flags

    async def test_limit_cursor_all(
        self, worker: WorkerProcess, client: RunsClient, nats_server: NatsServer
    ) -> None:
        """``--limit`` is one page (more is hinted on stderr); ``--all`` follows every cursor."""
        for n in range(3):
            await publish(client, f"p{n}")
        url = nats_server.url
        ordered = [item.run_id async for item in client.iter_runs()]
        page = await cli("list", "--limit", "2", "--json", url=url)
        assert page.code == 0, page.err
        assert [item["run_id"] for item in page.json_lines()] == ordered[:2]
        assert "--cursor " in page.err
        cursor = page.err.rsplit("--cursor ", 1)[1].strip()
        rest = await cli("list", "--limit", "2", "--cursor", cursor, "--json", url=url)
        assert [item["run_id"] for item in rest.json_lines()] == ordered[2:]
        assert rest.err == ""
        every = await cli("list", "--limit", "1", "--all", "--json", url=url)
        assert [item["run_id"] for item in every.json_lines()] == ordered
        table = await cli("list", "--all", "--limit", "1", url=url)
        assert len(table.out.splitlines()) == 1 + len(ordered)

    async def test_bad_limit(self, worker: WorkerProcess, nats_server: NatsServer) -> None:
        result = await cli("list", "--limit", "0", url=nats_server.url)
        result.assert_clean_failure()
        assert result.err.startswith("error INVALID_REQUEST: ")


@BOTH_STORES
class TestDiffVerify:
    """``diff A B`` and ``verify RUN_ID`` (exit 1 when the run no longer matches its hashes)."""

    async def test_diff(
        self, worker: WorkerProcess, client: RunsClient, nats_server: NatsServer
    ) -> None:
        a = await publish(client, "d1", notes="a")
        b = await publish(client, "d2", notes="a", status="ERROR")
        table = await cli("diff", a, b, url=nats_server.url)
        assert table.code == 0, table.err
        head, _, changes = table.out.partition("\n\n")
        assert block(head) == {"a": a, "b": b, "severity": "CRITICAL", "changes": "1"}
        assert changes.splitlines()[0].split() == ["PATH", "A", "B"]
        assert changes.splitlines()[1].split() == ["status", "OK", "ERROR"]
        as_json = await cli("diff", a, b, "--json", url=nats_server.url)
        assert as_json.json_lines() == [(await client.diff(a, b)).model_dump()]
        same = await cli("diff", a, a, url=nats_server.url)
        assert block(same.out)["changes"] == "0"
        missing = await cli("diff", a, "run_" + "9" * 32, url=nats_server.url)
        missing.assert_clean_failure()
        assert missing.err.startswith("error RUN_NOT_FOUND: ")

    async def test_verify_then_tamper(
        self, worker: WorkerProcess, client: RunsClient, nats_server: NatsServer
    ) -> None:
        run_id = await publish(client, "v1", notes="x")
        valid = await cli("verify", run_id, url=nats_server.url)
        assert valid.code == 0, valid.err
        assert block(valid.out.partition("\n\n")[0]) == {"run_id": run_id, "valid": "true"}
        assert "content_sha256" in valid.out
        await tamper(
            client, worker.data_dir, run_id, lambda data: data.replace(b'"notes":"x"', b'"n":"y"')
        )
        invalid = await cli("verify", run_id, url=nats_server.url)
        assert invalid.code == 1, invalid.err
        assert block(invalid.out.partition("\n\n")[0])["valid"] == "false"
        as_json = await cli("verify", run_id, "--json", url=nats_server.url)
        assert as_json.code == 1
        (report,) = as_json.json_lines()
        assert report["valid"] is False
        assert "content_sha256" in {c["name"] for c in report["checks"] if not c["ok"]}

    async def test_history(
        self, worker: WorkerProcess, client: RunsClient, nats_server: NatsServer
    ) -> None:
        """``history`` shows every revision, as a table or one JSON line each."""
        run_id = await publish(client, "h1")
        await client.patch_meta(run_id, {"ticket": "RMOS-7"})
        shown = await cli("history", run_id, url=nats_server.url)
        assert shown.code == 0, shown.err
        assert shown.out.splitlines()[0].split() == ["REVISION", "AT", "CHANGE", "BY", "CHANGED"]
        as_json = await cli("history", run_id, "--json", url=nats_server.url)
        assert [(r["revision"], r["change"]) for r in as_json.json_lines()] == [
            (1, "created"),
            (2, "meta"),
        ]
        assert as_json.json_lines()[1]["changed"] == ["meta.ticket"]


@BOTH_STORES
class TestAttach:
    """``attach FILE --kind K``: stores the blob, prints its attachment entry."""

    async def test_attach(
        self, worker: WorkerProcess, client: RunsClient, nats_server: NatsServer, tmp_path: Path
    ) -> None:
        data = b"<svg xmlns='http://www.w3.org/2000/svg'/>"
        path = tmp_path / "preview.svg"
        path.write_bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        table = await cli("attach", str(path), "--kind", "preview", url=nats_server.url)
        assert table.code == 0, table.err
        assert block(table.out) == {
            "sha256": sha,
            "kind": "preview",
            "mime": "image/svg+xml",
            "filename": "preview.svg",
            "size_bytes": str(len(data)),
        }
        blob, headers = await client.get_attachment(sha)
        assert blob == data
        assert headers["Rmos-Mime"] == "image/svg+xml"
        as_json = await cli(
            "attach", str(path), "--kind", "gcode", "--mime", "text/plain", "--filename", "a.nc",
            "--json", url=nats_server.url,
        )  # fmt: skip
        assert as_json.json_lines() == [
            {
                "sha256": sha,
                "kind": "gcode",
                "mime": "text/plain",
                "filename": "a.nc",
                "size_bytes": len(data),
            }
        ]

    async def test_missing_file(
        self, worker: WorkerProcess, nats_server: NatsServer, tmp_path: Path
    ) -> None:
        result = await cli("attach", str(tmp_path / "nope.nc"), "--kind", "g", url=nats_server.url)
        result.assert_clean_failure(Exit.USAGE)
        assert "nope.nc" in result.err


class TestConnection:
    """Finding the server, and failing clearly when there is none."""

    async def test_unreachable(self, tmp_path: Path) -> None:
        result = await cli("get", "run_" + "0" * 32, url="nats://127.0.0.1:9")
        result.assert_clean_failure(Exit.UNREACHABLE)
        assert "cannot reach NATS at nats://127.0.0.1:9" in result.err

    async def test_no_url(self, tmp_path: Path) -> None:
        result = await cli("list", "--data-dir", str(tmp_path))
        result.assert_clean_failure(Exit.USAGE)
        assert "no NATS URL" in result.err

    async def test_no_worker(self, nats_server: NatsServer) -> None:
        """A server with no worker: nothing answers the API."""
        result = await cli("verify", "run_" + "0" * 32, url=nats_server.url)
        result.assert_clean_failure()
        assert "rmos-runs worker" in result.err

    async def test_url_from_data_dir(
        self, worker: WorkerProcess, client: RunsClient, nats_server: NatsServer, tmp_path: Path
    ) -> None:
        """Without --nats-url, the URL a local embedded worker wrote under --data-dir."""
        run_id = await publish(client, "u1")
        data_dir = tmp_path / "local"
        url_file(data_dir).parent.mkdir(parents=True)
        url_file(data_dir).write_text(nats_server.url + "\n")
        result = await cli("get", run_id, "--json", "--data-dir", str(data_dir))
        assert result.code == 0, result.err
        assert result.json_lines()[0]["run_id"] == run_id


@BOTH_STORES
class TestDeadLetters:
    """``dlq list`` reads RMOS_DLQ; ``dlq replay`` publishes a dead letter's payload again."""

    async def test_list(
        self, worker: WorkerProcess, client: RunsClient, nats_server: NatsServer
    ) -> None:
        url = nats_server.url
        empty = await cli("dlq", "list", url=url)
        assert (empty.code, empty.out.split()[:2]) == (0, ["SEQ", "CODE"])
        await client.publish_raw("rmos.runs.v1.events.engine-a", b"{oops")
        await client.publish_event(event("s1", mode=""))  # SCHEMA_VIOLATION
        await wait_settled(client.js)
        table = await cli("dlq", "list", url=url)
        assert table.code == 0, table.err
        header, newest, oldest = table.out.splitlines()
        assert header.split() == [
            "SEQ", "CODE", "ORIGINAL_SUBJECT", "STREAM_SEQ", "DELIVERIES", "DEAD_LETTERED_AT",
            "DETAIL",
        ]  # fmt: skip
        assert newest.split()[:5] == [
            "2",
            "SCHEMA_VIOLATION",
            "rmos.runs.v1.events.engine-a",
            "2",
            "1",
        ]
        assert oldest.split()[:5] == ["1", "INVALID_JSON", "rmos.runs.v1.events.engine-a", "1", "1"]
        as_json = await cli("dlq", "list", "--json", url=url)
        assert [(d["seq"], d["code"]) for d in as_json.json_lines()] == [
            (2, "SCHEMA_VIOLATION"),
            (1, "INVALID_JSON"),
        ]
        assert as_json.json_lines()[1]["payload_size"] == len(b"{oops")
        only = await cli("dlq", "list", "--json", "--code", "INVALID_JSON", url=url)
        assert [d["seq"] for d in only.json_lines()] == [1]
        newest_only = await cli("dlq", "list", "--json", "--limit", "1", url=url)
        assert [d["seq"] for d in newest_only.json_lines()] == [2]
        none = await cli("dlq", "list", "--json", "--code", "RUN_ID_CONFLICT", url=url)
        assert (none.code, none.out) == (0, "")

    async def test_replay_after_fix(
        self, worker: WorkerProcess, client: RunsClient, nats_server: NatsServer, tmp_path: Path
    ) -> None:
        """An event naming a blob not yet stored is dead-lettered; attach the blob, replay it."""
        url = nats_server.url
        blob = b"G21 G90 G1 X1"
        ref = {
            "sha256": hashlib.sha256(blob).hexdigest(),
            "kind": "gcode",
            "mime": "text/plain",
            "filename": "a.nc",
            "size_bytes": len(blob),
        }
        await client.publish_event(event("att", attachments=[ref]))
        await wait_settled(client.js)
        (letter,) = (await cli("dlq", "list", "--json", url=url)).json_lines()
        assert letter["code"] == "UNKNOWN_ATTACHMENT"
        path = tmp_path / "a.nc"
        path.write_bytes(blob)
        attached = await cli(
            "attach", str(path), "--kind", "gcode", "--mime", "text/plain", url=url
        )
        assert attached.code == 0, attached.err

        replay = await cli("dlq", "replay", str(letter["seq"]), url=url)
        assert replay.code == 0, replay.err
        header, row = replay.out.splitlines()
        assert header.split() == ["DLQ_SEQ", "SUBJECT", "STREAM", "SEQ", "DUPLICATE"]
        assert row.split() == [
            str(letter["seq"]),
            letter["original_subject"],
            "RMOS_RUN_EVENTS",
            "2",
            "false",
        ]
        run = await stored(client, derive_run_id("engine-a", "att"))
        assert run["attachments"] == [ref]

        again = await cli("dlq", "replay", str(letter["seq"]), "--json", url=url)
        assert again.code == 0, again.err
        assert again.json_lines() == [
            {
                "dlq_seq": letter["seq"],
                "subject": letter["original_subject"],
                "stream": "RMOS_RUN_EVENTS",
                "seq": 2,
                "duplicate": True,
            }
        ]  # replay:<dlq seq> is the message id: sent twice, stored once
        await wait_settled(client.js)
        assert (await client.get(run["run_id"]))["revision"] == 1
        assert len(await dead_letters(client.js)) == 1

    async def test_replay_still_invalid(
        self, worker: WorkerProcess, client: RunsClient, nats_server: NatsServer
    ) -> None:
        """A replay that fails again is dead-lettered again, naming the replay's message id."""
        await client.publish_raw("rmos.runs.v1.events.engine-a", b"{oops", msg_id="x:1")
        await wait_settled(client.js)
        result = await cli("dlq", "replay", "1", url=nats_server.url)
        assert result.code == 0, result.err
        await wait_settled(client.js)
        letters = await dead_letters(client.js)
        assert [body["code"] for body, _ in letters] == ["INVALID_JSON", "INVALID_JSON"]
        first, second = (body for body, _ in letters)
        assert first["original_headers"]["Nats-Msg-Id"] == "x:1"
        assert second["original_headers"]["Nats-Msg-Id"] == "replay:1"
        assert second["original_headers"]["Rmos-Replay-Of"] == "RMOS_DLQ:1"
        assert second["payload_b64"] == first["payload_b64"]

    async def test_replay_refused(
        self, worker: WorkerProcess, client: RunsClient, nats_server: NatsServer
    ) -> None:
        """A truncated payload, or an unknown sequence, is refused and nothing is published."""
        url = nats_server.url
        await client.publish_raw("rmos.runs.v1.events.engine-a", b"{" + b"x" * (70 * 1024))
        await client.publish_raw("rmos.runs.v1.events.engine-a", b"{oops")
        await wait_settled(client.js)
        (truncated, small) = [body for body, _ in await dead_letters(client.js)]
        assert (truncated["payload_truncated"], small["payload_truncated"]) == (True, False)
        before = (await client.js.stream_info("RMOS_RUN_EVENTS")).state.last_seq

        refused = await cli("dlq", "replay", "2", "1", url=url)  # the good one is not sent either
        refused.assert_clean_failure()
        assert "payload_truncated" in refused.err
        unknown = await cli("dlq", "replay", "99", url=url)
        unknown.assert_clean_failure()
        assert "no dead letter 99" in unknown.err
        assert (await client.js.stream_info("RMOS_RUN_EVENTS")).state.last_seq == before
