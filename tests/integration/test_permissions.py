"""Every program does its whole job with the permissions ``rmos-runs permissions`` prints, and
no more (CONTRACT section 8, "Roles").

One nats-server (JetStream on) for the module, its configuration made here from
``role_permissions``: one user per role and deployment. Two deployments share it, each with a
worker of its own: the files store under the default prefixes, and the jetstream store under
``acme.runs`` / ``ACME`` (whose engine is narrowed to ``--source engine-a``). The worker, the
reference explainer (``rmos-runs explainer``) and the operator commands run as processes with
their role's user in the URL; the engine is a ``RunsClient``. After each test the server's log
holds no permissions violation but those a negative test caused on purpose; nor do the
programs' logs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import secrets
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats.errors
import pytest
import pytest_asyncio
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StreamConfig

from contracts.canonical import derive_run_id
from contracts.subjects import Subjects
from tests.support import ROOT, WorkerProcess, event, eventually, stored, stored_artifacts
from worker.client import RunsApiError, RunsClient
from worker.connection import first_connect
from worker.nats_server import NatsServer, find_binary
from worker.permissions import ROLES, role_permissions

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

PASSWORD = "pw-" + secrets.token_hex(8)
DEPLOYMENTS = {
    "files": (Subjects(), "", None),  # subjects, user name prefix, the engine's --source
    "jetstream": (Subjects(prefix="acme.runs", stream_prefix="ACME"), "acme-", "engine-a"),
}
# nats-server 2.15: ... - "$G/user:engine" - Publish Violation - Subject "rmos.runs.v1.api.x"
VIOLATION = re.compile(r'/user:([^"]+)" - (Publish|Subscription) Violation - Subject "([^"]+)"')
CLI_TIMEOUT_S = 60.0
REFUSED_WAIT_S = 2.0  # what a refused publish waits for a PubAck or reply that never comes


def user(store: str, role: str) -> str:
    return DEPLOYMENTS[store][1] + role


def server_config() -> str:
    """An ``authorization`` block: per deployment, one user per role with exactly what
    ``rmos-runs permissions ROLE`` prints; and ``admin`` (no limits) for the test's checks."""
    users = ['    { user: admin, password: "%s" }' % PASSWORD]  # noqa: UP031 (braces)
    for store, (subjects, _, source) in DEPLOYMENTS.items():
        for role in ROLES:
            permissions = role_permissions(role, subjects, source if role == "engine" else None)
            users.append(
                f'    {{ user: {user(store, role)}, password: "{PASSWORD}"\n'
                f"{permissions.server_config(indent='      ')}\n    }}"
            )
    return "authorization {\n  users: [\n" + ",\n".join(users) + "\n  ]\n}\n"


class ServerLog:
    """The permissions violations nats-server logs, from a mark on."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        return self.path.stat().st_size

    def violations(self, since: int) -> list[str]:
        """``USER: Publish to S`` / ``USER: Subscription to S`` of every violation logged
        after ``since``."""
        with self.path.open("rb") as log:
            log.seek(since)
            text = log.read().decode(errors="replace")
        return [f"{name}: {kind} to {subject}" for name, kind, subject in VIOLATION.findall(text)]


@dataclass
class Secured:
    server: NatsServer
    log: ServerLog
    expected: list[str] = field(default_factory=list)  # violations a negative test caused
    files_data: Path | None = None  # the files deployment's data dir, for ``migrate``

    def url(self, name: str) -> str:
        return f"nats://{name}:{PASSWORD}@127.0.0.1:{self.server.port}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def secured(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Secured]:
    directory = tmp_path_factory.mktemp("secured")
    conf = directory / "server.conf"
    conf.write_text(server_config())
    server = NatsServer(directory / "store", extra_args=["-c", str(conf)])
    await server.start()
    try:
        yield Secured(server, ServerLog(server.log_path))
    finally:
        await server.stop()


@pytest.fixture(autouse=True)
def no_violations(secured: Secured) -> Iterator[None]:
    """After each test, the server saw no permissions violation but the expected ones."""
    secured.expected.clear()
    mark = secured.log.mark()
    yield
    unexpected = [
        v for v in secured.log.violations(mark) if not any(e in v for e in secured.expected)
    ]
    assert not unexpected, f"permissions missing: {unexpected}"


class Program:
    """A long-running ``rmos-runs`` subprocess (here: the explainer), its output in a file."""

    def __init__(self, log_path: Path, *args: str, env: dict[str, str]) -> None:
        self.args = args
        self.env = env
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "worker.cli", *self.args,
                stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL, env=self.env, cwd=ROOT,
            )  # fmt: skip

    async def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), 30)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise
        finally:
            self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Deployment:
    """One deployment on the shared server: its worker, its explainer, a client per role."""

    store: str
    subjects: Subjects
    source: str  # the engine's source
    secured: Secured
    directory: Path
    env: dict[str, str]
    worker: WorkerProcess
    engine: RunsClient
    operator: RunsClient
    explainer_client: RunsClient
    admin: Client
    errors: dict[str, list[str]]  # the error callbacks' texts, by role
    explainer: Program | None = None

    def url(self, role: str) -> str:
        return self.secured.url(user(self.store, role))

    def refusal(self, role: str, subject: str) -> str:
        """A violation the server logs, as ``ServerLog.violations`` gives it; expected now."""
        violation = f"{user(self.store, role)}: Publish to {subject}"
        self.secured.expected.append(violation)
        return violation

    async def start_explainer(self) -> None:
        if self.explainer is None:
            program = Program(
                self.directory / "explainer.log",
                "explainer", "--nats-url", self.url("explainer"),
                env=self.env,
            )  # fmt: skip
            await program.start()
            self.explainer = program

    async def stop_explainer(self) -> None:
        if self.explainer is not None:
            program, self.explainer = self.explainer, None
            assert await program.stop() == 0, program.log()[-3000:]

    async def cli(self, *args: str, check: bool = True) -> tuple[int, str]:
        """An operator command with the operator's user: exit code and stdout."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker.cli", *args, "--nats-url", self.url("operator"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL, env=self.env, cwd=ROOT,
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT_S)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        text, said = out.decode(errors="replace"), err.decode(errors="replace")
        assert "violation" not in said.lower(), said
        if check:
            assert proc.returncode == 0, f"{args}: exit {proc.returncode}\n{text}\n{said}"
        assert proc.returncode is not None
        return proc.returncode, text

    async def cli_json(self, *args: str) -> list[dict[str, Any]]:
        _, text = await self.cli(*args, "--json")
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def event(self, tag: str, **fields: Any) -> dict[str, Any]:
        return event(f"perm-{tag}-{uuid.uuid4().hex[:8]}", source=self.source, **fields)

    def run_id(self, body: dict[str, Any]) -> str:
        return derive_run_id(body["source"], body["event_id"])

    async def messages_on(self, stream: str, subject: str) -> int:
        """Messages on ``subject`` in ``stream``, as the admin sees them."""
        info = await self.admin.jetstream().stream_info(stream, subjects_filter=subject)
        return (info.state.subjects or {}).get(subject, 0)


async def connect(deployment_url: str, subjects: Subjects, errors: list[str]) -> RunsClient:
    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await first_connect([deployment_url], timeout=10, error_cb=on_error)
    return RunsClient(nc, subjects, timeout=REFUSED_WAIT_S * 2)


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=list(DEPLOYMENTS))
async def deployment(
    request: pytest.FixtureRequest, secured: Secured, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Deployment]:
    store: str = request.param
    subjects, _, source = DEPLOYMENTS[store]
    directory = tmp_path_factory.mktemp(store)
    settings = {
        "RMOS_SUBJECT_PREFIX": subjects.prefix,
        "RMOS_STREAM_PREFIX": subjects.stream_prefix,
        "RMOS_STORE": store,
        "RMOS_STORE_REPLICAS": "1",
        "RMOS_CONNECT_TIMEOUT_S": "10",
        "RMOS_METRICS_PORT": str(free_port()),  # its sampler reads the events consumer's info
    }
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RMOS_")},
        "PYTHONUNBUFFERED": "1",
        **settings,
    }
    errors: dict[str, list[str]] = {role: [] for role in ("engine", "operator", "explainer")}
    clients = {
        role: await connect(secured.url(user(store, role)), subjects, found)
        for role, found in errors.items()
    }
    admin = await first_connect([secured.url("admin")], timeout=10)
    if store == "jetstream":
        await left_otherwise(admin.jetstream(), subjects)
    worker = WorkerProcess(secured.url(user(store, "worker")), directory / "data", env=settings)
    deployment = Deployment(
        store, subjects, source or "engine-b", secured, directory, env, worker,
        clients["engine"], clients["operator"], clients["explainer"], admin, errors,
    )  # fmt: skip
    try:
        await worker.start(clients["operator"])  # ready: it answers the operator's get
        WorkerProcess.started.remove(worker)  # kept for the module, not reaped after a test
        if store == "files":
            secured.files_data = worker.data_dir
        yield deployment
        await deployment.stop_explainer()
        assert await worker.terminate() == 0, worker.log()
        for name, log in (("worker", worker.log()), ("explainer", _read(directory))):
            assert "violation" not in log.lower(), f"{name}:\n{log[-5000:]}"
    finally:
        if worker.proc is not None and worker.proc.returncode is None:
            await worker.kill()
        if deployment.explainer is not None and deployment.explainer.proc is not None:
            deployment.explainer.proc.kill()
        for client in clients.values():
            await client.close()
        await admin.close()


async def left_otherwise(js: JetStreamContext, subjects: Subjects) -> None:
    """Streams and a bucket made earlier with other settings: the worker brings them to its
    own (``STREAM.INFO`` and ``STREAM.UPDATE`` with its role)."""
    await js.add_stream(
        StreamConfig(
            name=subjects.dlq_stream, subjects=[f"{subjects.dlq}.>"], duplicate_window=30.0
        )
    )
    await js.create_key_value(
        KeyValueConfig(bucket=f"{subjects.stream_prefix}_BLOB_META", history=5)
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def http_status(port: int, path: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return int(response.split(b" ", 2)[1])


def _read(directory: Path) -> str:
    path = directory / "explainer.log"
    return path.read_text(errors="replace") if path.exists() else ""


async def status_of(client: RunsClient, run_id: str, wanted: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        try:
            run = await client.get(run_id)
        except RunsApiError as exc:
            if exc.code != "RUN_NOT_FOUND":  # not ingested yet
                raise
            return None
        return run if run["explanation_status"] == wanted else None

    return await eventually(probe, timeout=30)


def blocked(deployment: Deployment, tag: str) -> dict[str, Any]:
    return deployment.event(
        tag,
        status="BLOCKED",
        decision={"risk_level": "RED", "score": 12, "block_reason": "wall thinner than the bit"},
    )


async def test_readme_config_loads(tmp_path: Path) -> None:
    """nats-server accepts README's example configuration as it is written."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Roles and a secured server\n", 1)[1].split("\n## ", 1)[0]
    config = section.split("```\n", 1)[1].split("\n```", 1)[0]
    assert "/var/lib/nats" in config
    conf = tmp_path / "example.conf"
    conf.write_text(config.replace("/var/lib/nats", str(tmp_path / "js")))
    proc = await asyncio.create_subprocess_exec(
        find_binary(), "-t", "-c", str(conf),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, out.decode(errors="replace")


class TestRolesAtWork:
    """Each program does its whole job with its role only (both stores)."""

    async def test_worker_ready(self, deployment: Deployment) -> None:
        """Streams, consumers and store declared, every task running, gauges sampled."""
        port = int(deployment.worker.env["RMOS_METRICS_PORT"])

        async def ready() -> bool | None:
            return True if await http_status(port, "/readyz") == 200 else None

        await eventually(ready, timeout=30)

    async def test_engine_ingests(self, deployment: Deployment) -> None:
        """Events over JetStream and ``create``; ``attachments.put`` and ``get``."""
        engine = deployment.engine
        first = deployment.event("published")
        ack = await engine.publish_event(first)
        assert ack.stream == deployment.subjects.events_stream
        attachment = await engine.put_attachment(b"G1 X0 Y0\n", kind="gcode", mime="text/plain")
        second = deployment.event(
            "created",
            attachments=[
                {
                    "sha256": attachment.sha256,
                    "kind": "gcode",
                    "mime": "text/plain",
                    "filename": "a.nc",
                    "size_bytes": attachment.size_bytes,
                }
            ],
        )
        created = await engine.create(second)
        assert created.run_id == deployment.run_id(second)
        assert not created.duplicate
        assert (await stored(engine, deployment.run_id(first)))["status"] == "OK"
        assert (await engine.get(created.run_id))["attachments"][0]["sha256"] == attachment.sha256
        assert deployment.errors["engine"] == []

    async def test_large_blob_read_back(self, deployment: Deployment) -> None:
        """Near the blob limit, put by the engine, read by the explainer's role, verified."""
        data = secrets.token_bytes(700 * 1024)
        put = await deployment.engine.put_attachment(data, kind="bin")
        back, _ = await deployment.explainer_client.get_attachment(put.sha256)
        assert back == data

    async def test_dead_letter_listed_and_replayed(self, deployment: Deployment) -> None:
        """An event naming a blob not stored yet is dead-lettered; once the engine stores it,
        the operator finds the letter (``dlq list``) and replays it (``dlq replay``)."""
        data = f"G1 X1 Y1 ; {uuid.uuid4()}\n".encode()
        sha = hashlib.sha256(data).hexdigest()
        body = deployment.event(
            "dead",
            attachments=[
                {
                    "sha256": sha,
                    "kind": "gcode",
                    "mime": "text/plain",
                    "filename": "late.nc",
                    "size_bytes": len(data),
                }
            ],
        )
        await deployment.engine.publish_event(body)

        async def letter() -> int | None:
            letters = await deployment.cli_json("dlq", "list", "--code", "UNKNOWN_ATTACHMENT")
            for found in letters:
                if (
                    json.loads(base64.b64decode(found["payload_b64"]))["event_id"]
                    == body["event_id"]
                ):
                    return int(found["seq"])
            return None

        seq = await eventually(letter, timeout=60)
        with pytest.raises(RunsApiError, match="RUN_NOT_FOUND"):
            await deployment.operator.get(deployment.run_id(body))
        await deployment.engine.put_attachment(data, kind="gcode")
        (replayed,) = await deployment.cli_json("dlq", "replay", str(seq))
        assert replayed["stream"] == deployment.subjects.events_stream
        run = await stored(deployment.operator, deployment.run_id(body))
        assert run["attachments"][0]["sha256"] == sha

    async def test_invalid_patch_replayed(self, deployment: Deployment) -> None:
        """A patch for a run that does not exist is dead-lettered ``INVALID_PATCH``; a replay
        publishes it to its patch subject again (and it is dead-lettered again)."""
        run_id = "run_" + uuid.uuid4().hex
        subject = deployment.subjects.explain_patch(run_id)
        patch = {
            "schema": "rmos.explanation_patch.v1",
            "run_id": run_id,
            "request_id": f"req_{run_id[4:]}_1",
            "explainer_id": "a-late-explainer",
            "status": "ERROR",
            "error": "no such run",
        }
        await deployment.explainer_client.publish_raw(subject, json.dumps(patch).encode())

        async def letters() -> list[int] | None:
            found = await deployment.cli_json("dlq", "list", "--code", "INVALID_PATCH")
            seqs = [int(f["seq"]) for f in found if f["original_subject"] == subject]
            return seqs or None

        (seq,) = await eventually(letters, timeout=60)
        (replayed,) = await deployment.cli_json("dlq", "replay", str(seq))
        assert replayed["subject"] == subject
        assert replayed["stream"] == deployment.subjects.explain_stream

        async def again() -> list[int] | None:
            seqs = await letters()
            return seqs if seqs is not None and len(seqs) == 2 else None

        await eventually(again, timeout=60)

    async def test_blocked_run_explained(self, deployment: Deployment) -> None:
        """The reference explainer, with its role, explains a BLOCKED run: it goes READY, and
        the explainer's role reads the run and its stored explanation back."""
        await deployment.start_explainer()
        body = blocked(deployment, "explained")
        await deployment.engine.publish_event(body)
        run = await status_of(deployment.operator, deployment.run_id(body), "READY")
        assert run["explanation_summary"]
        (advisory,) = run["advisory_inputs"]
        explainer = deployment.explainer_client
        assert (await explainer.get(run["run_id"]))["revision"] == run["revision"]
        text, headers = await explainer.get_attachment(advisory["sha256"])
        assert run["run_id"].encode() in text
        assert headers["Rmos-Sha256"] == advisory["sha256"]
        assert deployment.errors["explainer"] == []

    async def test_operator_commands(self, deployment: Deployment) -> None:
        """``list``, ``get``, ``verify``, ``history``, ``diff`` as commands; ``patch_meta`` and
        ``explain`` with ``force`` through the client: every API operation."""
        await deployment.start_explainer()
        a, b = deployment.event("op-a"), blocked(deployment, "op-b")
        await deployment.engine.publish_event(a)
        await deployment.engine.publish_event(b)
        run_a, run_b = deployment.run_id(a), deployment.run_id(b)
        await stored(deployment.operator, run_a)
        await status_of(deployment.operator, run_b, "READY")
        operator = deployment.operator
        patched = await operator.patch_meta(run_a, {"ticket": "RMOS-42"})
        assert patched.revision == 2
        explained = await operator.explain(run_b, force=True)
        assert explained.explanation_status == "PENDING"
        final = await status_of(operator, run_b, "READY")
        listed, got, verified, history, diff = await asyncio.gather(
            deployment.cli_json("list", "--source", deployment.source, "--all"),
            deployment.cli_json("get", run_a),
            deployment.cli_json("verify", run_b),
            deployment.cli_json("history", run_b),
            deployment.cli_json("diff", run_a, run_b),
        )
        assert {run_a, run_b} <= {item["run_id"] for item in listed}
        assert got[0]["meta"]["ticket"] == "RMOS-42"
        assert verified[0]["valid"] is True
        # created PENDING, READY; PENDING again (forced), READY
        assert [r["revision"] for r in history] == list(range(1, final["revision"] + 1))
        assert history[0]["change"] == "created"
        assert {r["change"] for r in history[1:]} <= {"explanation", "advisory"}
        assert diff[0]["severity"] == "CRITICAL"
        assert deployment.errors["operator"] == []

    async def test_operator_audits(self, deployment: Deployment) -> None:
        """``checkpoint`` and ``audit`` with the operator's user: the latest checkpoint, then
        the whole store against the log (the files store's data dir is read as a file, the
        jetstream store's log copied into a temp dir)."""
        body = deployment.event("audit")
        await deployment.engine.publish_event(body)
        await stored(deployment.operator, deployment.run_id(body))
        public = str(deployment.worker.data_dir / "signing.key.pub")
        [checkpoint] = await deployment.cli_json("checkpoint", "--public-key", public)
        assert checkpoint["schema"] == "rmos.log_checkpoint.v1"
        where = (
            ["--data-dir", str(deployment.worker.data_dir)] if deployment.store == "files" else []
        )
        [summary] = await deployment.cli_json("audit", *where, "--public-key", public)
        assert summary["findings"] == [], summary
        assert summary["runs"] >= 1
        assert summary["checkpoints"] >= 1


class TestRefused:
    """What a role does not allow, the server refuses; nothing of it reaches the worker."""

    async def test_engine_cannot_patch(self, deployment: Deployment) -> None:
        """A well-formed patch for a PENDING run, from the engine: refused, the run stays
        PENDING; the reference explainer then explains it as usual."""
        await deployment.stop_explainer()
        body = blocked(deployment, "not-by-engine")
        await deployment.engine.publish_event(body)
        run_id = deployment.run_id(body)
        run = await status_of(deployment.operator, run_id, "PENDING")
        subject = deployment.subjects.explain_patch(run_id)
        patch = {
            "schema": "rmos.explanation_patch.v1",
            "run_id": run_id,
            "request_id": run["explanation_request_id"],
            "explainer_id": "an-engine",
            "status": "READY",
            "summary": "explained by the wrong party",
        }
        async with refused(deployment, "engine", subject):  # no PubAck ever comes
            await deployment.engine.publish_raw(subject, json.dumps(patch).encode())
        assert await deployment.messages_on(deployment.subjects.explain_stream, subject) == 0
        await asyncio.sleep(REFUSED_WAIT_S)  # what an accepted patch would take to apply
        still = await deployment.operator.get(run_id)
        assert still["explanation_status"] == "PENDING"
        assert still["revision"] == run["revision"]
        await deployment.start_explainer()
        assert (await status_of(deployment.operator, run_id, "READY"))["explanation_summary"]

    async def test_engine_cannot_change_meta(self, deployment: Deployment) -> None:
        created = await deployment.engine.create(deployment.event("no-meta"))
        async with refused(deployment, "engine", deployment.subjects.api_op("patch_meta")):
            await deployment.engine.patch_meta(created.run_id, {"approved": True})
        run = await deployment.operator.get(created.run_id)
        assert run["revision"] == 1
        assert "approved" not in run.get("meta", {})

    async def test_explainer_cannot_publish_events(self, deployment: Deployment) -> None:
        body = {**deployment.event("not-by-explainer"), "source": "explainer-posing"}
        subject = deployment.subjects.event(body["source"])
        async with refused(deployment, "explainer", subject):
            await deployment.explainer_client.publish_event(body)
        assert await deployment.messages_on(deployment.subjects.events_stream, subject) == 0
        with pytest.raises(RunsApiError, match="RUN_NOT_FOUND"):
            await deployment.explainer_client.get(deployment.run_id(body))

    async def test_engine_stays_in_its_lane(self, deployment: Deployment) -> None:
        """Not another deployment's subjects; narrowed by ``--source``, not another engine's."""
        other = next(s for s, _, _ in DEPLOYMENTS.values() if s != deployment.subjects)
        subjects = [other.event(deployment.source), other.api_op("get")]
        if deployment.source == "engine-a":
            subjects.append(deployment.subjects.event("engine-z"))
        for subject in subjects:
            async with refused(deployment, "engine", subject):
                await deployment.engine.publish_raw(subject, b"{}")


@contextlib.asynccontextmanager
async def refused(deployment: Deployment, role: str, subject: str) -> AsyncIterator[None]:
    """The block's publish to ``subject`` by ``role`` is refused by the server: no PubAck or
    reply comes (the block raises a timeout), the client's error callback hears of it, and the
    server logs it (an expected violation)."""
    violation = deployment.refusal(role, subject)
    log = deployment.secured.log
    mark = log.mark()
    with pytest.raises((TimeoutError, nats.errors.Error)):
        yield
    said = f'permissions violation for publish to "{subject}"'

    async def heard() -> bool | None:
        logged = violation in log.violations(mark)
        return True if logged and any(said in e.lower() for e in deployment.errors[role]) else None

    await eventually(heard, timeout=10)
    deployment.errors[role].clear()


class TestMigrate:
    async def test_migrate_with_the_worker_role(self, deployment: Deployment) -> None:
        """``rmos-runs migrate`` copies a files data dir into the jetstream store with the
        worker's user: the files deployment's runs, now in the acme store."""
        source = deployment.secured.files_data
        if deployment.store != "jetstream" or source is None:
            pytest.skip("migrates the files deployment's data dir into the jetstream store")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker.cli", "migrate", "--data-dir", str(source),
            "--nats-url", deployment.url("worker"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL, env=deployment.env, cwd=ROOT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT_S)
        said = out.decode(errors="replace")
        assert proc.returncode == 0, said
        assert "violation" not in said.lower(), said
        runs = stored_artifacts(source)
        assert runs
        for run_id, data in runs.items():
            copied = await deployment.operator.get(run_id)
            assert copied["content_sha256"] == json.loads(data)["content_sha256"]
