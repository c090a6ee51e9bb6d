"""Every way the settings offer to authenticate and encrypt, against real nats-servers
(CONTRACT section 8, "Connections").

One server per configuration: user and password, token, nkey, creds (operator mode, JWTs signed
here), TLS verified with a CA made here, and client certificates. For each: a worker process
(the first with a sibling process) becomes ready and stores an event a :class:`RunsClient`
publishes with the same settings, and a client command reads it back; no password, token, seed,
JWT or private key appears in the worker's log or the command's output.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nkeys  # type: ignore[import-untyped]
import pytest

from contracts.canonical import derive_run_id
from tests.integration.test_connect import configured_server, free_port
from tests.support import WorkerProcess, event, eventually, run_cli, stored
from worker.client import RunsClient
from worker.connection import connection_name
from worker.nats_server import NatsServer
from worker.settings import Settings

pytestmark = pytest.mark.integration
PASSWORD = "pw-7GkQz2rT"
TOKEN = "tok9Xq4Lm2Vb"
CONNECT_TIMEOUT_S = "10"
COMMAND_TIMEOUT_S = 60.0
UNLIMITED = ("subs", "data", "payload", "imports", "exports", "conn", "leaf", "mem_storage",
             "disk_storage", "streams", "consumer")  # fmt: skip


@dataclass
class Method:
    """A way to connect: the worker's URL, the settings (as environment), the secrets in it."""

    url: str
    env: dict[str, str]
    secrets: list[str] = field(default_factory=list)

    def settings(self) -> Settings:
        given = {name.removeprefix("RMOS_").lower(): value for name, value in self.env.items()}
        return Settings(nats_url=self.url, **given)  # type: ignore[arg-type]


# --- keys, certificates, JWTs ------------------------------------------------------------------


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@dataclass(frozen=True)
class Pki:
    """A CA made for the test, a server certificate for 127.0.0.1 and a client certificate it
    signed (EC keys: fast to make)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def key_body(self) -> str:
        """A line of the client's private key, to look for where it must not be."""
        return self.client_key.read_text().splitlines()[1]


def _signed(directory: Path, name: str, subject: str, extensions: str) -> tuple[Path, Path]:
    cert, key, csr = (directory / f"{name}.{ext}" for ext in ("pem", "key", "csr"))
    ext = directory / f"{name}.ext"
    ext.write_text(extensions)
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-subj", subject, "-keyout", str(key), "-out", str(csr))  # fmt: skip
    openssl("x509", "-req", "-in", str(csr), "-CA", str(directory / "ca.pem"),
            "-CAkey", str(directory / "ca.key"), "-CAcreateserial", "-days", "2",
            "-extfile", str(ext), "-out", str(cert))  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make certificates")
    directory = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "2", "-subj", "/CN=rmos test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout", str(directory / "ca.key"), "-out", str(directory / "ca.pem"))  # fmt: skip
    server = _signed(
        directory, "server", "/CN=127.0.0.1",
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )  # fmt: skip
    client = _signed(directory, "client", "/CN=rmos-worker", "extendedKeyUsage=clientAuth\n")
    return Pki(directory / "ca.pem", *server, *client)


def new_key(prefix: int) -> tuple[bytes, Any]:
    """A new nkey: its seed and its key pair."""
    seed = nkeys.encode_seed(os.urandom(32), prefix)
    return seed, nkeys.from_seed(bytearray(seed))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed_jwt(subject: str, name: str, nats: dict[str, Any], signer: Any) -> str:
    """A JWT as nats-io/jwt v2 encodes one: ed25519-nkey, signed by ``signer``."""
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    claims = {
        "jti": base64.b32encode(os.urandom(20)).decode().rstrip("="),
        "iat": int(time.time()),
        "iss": signer.public_key.decode(),
        "name": name,
        "sub": subject,
        "nats": {**nats, "version": 2},
    }
    payload = _b64(json.dumps(claims).encode())
    return f"{header}.{payload}.{_b64(signer.sign(f'{header}.{payload}'.encode()))}"


@dataclass(frozen=True)
class Operator:
    """Operator mode: the server's configuration and a user's ``.creds`` file."""

    config: str
    creds: Path
    secrets: list[str]


def operator_mode(directory: Path) -> Operator:
    _, operator = new_key(nkeys.PREFIX_BYTE_OPERATOR)
    _, system = new_key(nkeys.PREFIX_BYTE_ACCOUNT)  # JetStream needs the system account
    _, account = new_key(nkeys.PREFIX_BYTE_ACCOUNT)
    user_seed, user = new_key(nkeys.PREFIX_BYTE_USER)
    operator_pub, account_pub = operator.public_key.decode(), account.public_key.decode()
    system_pub = system.public_key.decode()
    operator_nats = {"type": "operator", "system_account": system_pub}
    operator_jwt = signed_jwt(operator_pub, "rmos-test", operator_nats, operator)
    system_jwt = signed_jwt(system_pub, "SYS", {"type": "account"}, operator)
    limits: dict[str, Any] = dict.fromkeys(UNLIMITED, -1)  # JetStream too: mem and disk storage
    limits["wildcards"] = True
    account_jwt = signed_jwt(
        account_pub,
        "RMOS",
        {"type": "account", "limits": limits, "default_permissions": {"pub": {}, "sub": {}}},
        operator,
    )
    user_nats = {"type": "user", "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}
    user_jwt = signed_jwt(user.public_key.decode(), "rmos-worker", user_nats, account)
    creds = directory / "rmos.creds"
    creds.write_text(
        f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{user_seed.decode()}\n------END USER NKEY SEED------\n"
    )
    config = (
        f"operator: {operator_jwt}\nsystem_account: {system_pub}\nresolver: MEMORY\n"
        f"resolver_preload: {{\n  {system_pub}: {system_jwt}\n  {account_pub}: {account_jwt}\n}}\n"
    )
    return Operator(config, creds, [user_seed.decode(), user_jwt.split(".")[2]])


# --- processes ---------------------------------------------------------------------------------


@pytest.fixture
async def servers() -> AsyncIterator[list[NatsServer]]:
    """The test's servers, stopped after it."""
    started: list[NatsServer] = []
    yield started
    for server in started:
        await server.stop()


async def serve(servers: list[NatsServer], directory: Path, config: str, *args: str) -> NatsServer:
    server = configured_server(directory, config)
    server.extra_args = (*server.extra_args, *args)
    await server.start()
    servers.append(server)
    return server


async def command(*args: str, env: dict[str, str]) -> tuple[int, str]:
    """``rmos-runs ARGS`` with only the settings ``env``: its exit code and its output."""
    settings = {"RMOS_CONNECT_TIMEOUT_S": CONNECT_TIMEOUT_S, **env}
    return await run_cli(*args, env=settings, timeout=COMMAND_TIMEOUT_S)


async def get_works(run_id: str, url: str, env: dict[str, str], secrets: Sequence[str]) -> None:
    """``rmos-runs get RUN`` reads the run back; nothing secret in its output."""
    code, out = await command("get", run_id, "--json", "--nats-url", url, env=env)
    assert code == 0, out
    assert json.loads(out)["run_id"] == run_id
    assert_no_secret(out, secrets)


def assert_no_secret(text: str, secrets: Sequence[str]) -> None:
    shown = [secret for secret in secrets if secret in text]
    assert not shown, f"secrets {shown} in:\n{text[-3000:]}"


async def stores_an_event(
    tmp_path: Path, method: Method, event_id: str, *worker_args: str, processes: int = 1
) -> tuple[WorkerProcess, RunsClient, str]:
    """A worker connected with ``method`` (``--verbose``: every line it logs) stores an event a
    client connected with ``method`` publishes."""
    env = {**method.env, "RMOS_CONNECT_TIMEOUT_S": CONNECT_TIMEOUT_S}
    worker = WorkerProcess(method.url, tmp_path / f"data-{event_id}", env=env)
    client = await RunsClient.from_settings(method.settings(), "test", timeout=10)
    try:
        args = ("--verbose", "--processes", str(processes), *worker_args)
        await worker.start(None, 60.0, *args)
        await worker.wait_ready(client, 60.0)

        async def all_ready() -> bool | None:
            return True if worker.ready_lines() >= processes else None

        await eventually(all_ready, timeout=60)
        await client.publish_event(event(event_id))
        run_id = derive_run_id("engine-a", event_id)
        await stored(client, run_id)
    except BaseException:
        await client.close()
        raise
    return worker, client, run_id


async def stopped(worker: WorkerProcess, client: RunsClient, secrets: Sequence[str]) -> None:
    """Stop both; the worker stopped cleanly and logged no secret."""
    await client.close()
    assert await worker.terminate() == 0, worker.log()
    assert_no_secret(worker.log_path.read_text(errors="replace"), secrets)


def connz(port: int) -> list[dict[str, Any]]:
    """The server's client connections (its monitoring endpoint)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/connz", timeout=10) as reply:
        connections: list[dict[str, Any]] = json.load(reply)["connections"]
    return connections


# --- the methods -------------------------------------------------------------------------------


async def test_user_and_password(tmp_path: Path, servers: list[NatsServer], pki: Pki) -> None:
    """Settings win over a URL's wrong password (the worker and its sibling process); the URL's
    user information alone works too; a TLS setting refuses a server without TLS before the
    password is sent."""
    config = f'authorization {{ users: [ {{ user: alice, password: "{PASSWORD}" }} ] }}\n'
    server = await serve(servers, tmp_path / "server", config)
    wrong = f"nats://alice:wrong-{PASSWORD[::-1]}@127.0.0.1:{server.port}"
    secrets = [PASSWORD, PASSWORD[::-1]]
    env = {"RMOS_NATS_USER": "alice", "RMOS_NATS_PASSWORD": PASSWORD}
    method = Method(wrong, env, secrets)
    worker, client, run_id = await stores_an_event(tmp_path, method, "userpass", processes=2)
    try:
        await get_works(run_id, server.url, env, secrets)
        await get_works(run_id, wrong, env, secrets)
        await get_works(run_id, f"nats://alice:{PASSWORD}@127.0.0.1:{server.port}", {}, secrets)
        async with await RunsClient.connect(
            f"nats://alice:{PASSWORD}@127.0.0.1:{server.port}"
        ) as by_url:
            assert (await by_url.get(run_id))["run_id"] == run_id

        code, out = await command(
            "get", run_id, "--nats-url", server.url, env={**env, "RMOS_NATS_TLS_CA": str(pki.ca)}
        )
        assert code != 0, out
        [line] = out.splitlines()
        assert f"cannot reach NATS at {server.url} (gave up before" in line, out
        assert line.endswith("TLS required: the server does not offer TLS"), out
        assert_no_secret(out, secrets)
    finally:
        await stopped(worker, client, secrets)


async def test_token(tmp_path: Path, servers: list[NatsServer]) -> None:
    """RMOS_NATS_TOKEN, with the reference explainer in the worker's process; a token in the
    URL works too."""
    server = await serve(servers, tmp_path / "server", f'authorization {{ token: "{TOKEN}" }}\n')
    env = {"RMOS_NATS_TOKEN": TOKEN}
    method = Method(server.url, env, [TOKEN])
    worker, client, run_id = await stores_an_event(tmp_path, method, "token", "--explainer")
    try:
        await get_works(run_id, server.url, env, [TOKEN])
        await get_works(run_id, f"nats://{TOKEN}@127.0.0.1:{server.port}", {}, [TOKEN])
        await client.publish_event(event("token-explained", explain=True))
        explained_id = await stored(client, derive_run_id("engine-a", "token-explained"))

        async def explained() -> dict[str, Any] | None:
            run = await client.get(explained_id["run_id"])
            return run if run.get("explanation_status") == "READY" else None

        await eventually(explained, timeout=30)
    finally:
        await stopped(worker, client, [TOKEN])


async def test_nkey_seed(tmp_path: Path, servers: list[NatsServer]) -> None:
    seed, key = new_key(nkeys.PREFIX_BYTE_USER)
    seed_file = tmp_path / "worker.nk"
    seed_file.write_bytes(seed + b"\n")
    config = f'authorization {{ users: [ {{ nkey: "{key.public_key.decode()}" }} ] }}\n'
    server = await serve(servers, tmp_path / "server", config)
    env = {"RMOS_NATS_NKEY_SEED": str(seed_file)}
    secrets = [seed.decode()]
    worker, client, run_id = await stores_an_event(
        tmp_path, Method(server.url, env, secrets), "nkey"
    )
    try:
        await get_works(run_id, server.url, env, secrets)
        code, out = await command("get", run_id, "--nats-url", server.url, env={})
        assert code != 0
        assert "authorization violation" in out, out
    finally:
        await stopped(worker, client, secrets)


async def test_creds_in_operator_mode(tmp_path: Path, servers: list[NatsServer]) -> None:
    """A ``.creds`` file of a user whose account has JetStream; the jetstream store (its list
    projection connects on its own) and ``list``."""
    operator = operator_mode(tmp_path)
    server = await serve(servers, tmp_path / "server", operator.config)
    env = {"RMOS_NATS_CREDS": str(operator.creds)}
    worker_env = {"RMOS_STORE": "jetstream", "RMOS_STORE_REPLICAS": "1"}
    worker, client, run_id = await stores_an_event(
        tmp_path, Method(server.url, {**env, **worker_env}, operator.secrets), "creds"
    )
    try:
        await get_works(run_id, server.url, env, operator.secrets)

        async def listed() -> str | None:
            code, out = await command("list", "--json", "--nats-url", server.url, env=env)
            assert code == 0, out
            assert_no_secret(out, operator.secrets)
            return out if run_id in out else None

        await eventually(listed, timeout=30)
    finally:
        await stopped(worker, client, operator.secrets)


async def test_tls_verified_with_a_ca(tmp_path: Path, servers: list[NatsServer], pki: Pki) -> None:
    """RMOS_NATS_TLS_CA: TLS whatever the URL's scheme, upgraded where the server only offers
    it; every connection of the worker is TLS and named after its program, host and process."""
    monitor = free_port()
    config = (
        f'tls {{ cert_file: "{pki.server_cert}", key_file: "{pki.server_key}" }}\n'
        "allow_non_tls: true\n"  # offers TLS: plain-text clients are let in too
    )
    server = await serve(servers, tmp_path / "server", config, "-m", str(monitor))
    env = {"RMOS_NATS_TLS_CA": str(pki.ca)}
    worker_env = {"RMOS_STORE": "jetstream", "RMOS_STORE_REPLICAS": "1", **env}
    worker, client, run_id = await stores_an_event(tmp_path, Method(server.url, worker_env), "ca")
    try:
        await get_works(run_id, f"tls://127.0.0.1:{server.port}", env, [])
        assert worker.proc is not None
        names = {c.get("name", ""): c for c in await asyncio.to_thread(connz, monitor)}
        pid = worker.proc.pid
        for program in ("worker", "worker-projection"):
            name = connection_name(program).rsplit(":", 1)[0] + f":{pid}"
            assert name in names, sorted(names)
            assert names[name].get("tls_version"), names[name]
        assert names[connection_name("test")].get("tls_version")
    finally:
        await stopped(worker, client, [])


async def test_client_certificates(tmp_path: Path, servers: list[NatsServer], pki: Pki) -> None:
    """A server that verifies client certificates: RMOS_NATS_TLS_CERT and RMOS_NATS_TLS_KEY;
    without them, one clear line."""
    config = (
        f'tls {{ cert_file: "{pki.server_cert}", key_file: "{pki.server_key}", '
        f'ca_file: "{pki.ca}", verify: true }}\n'
    )
    server = await serve(servers, tmp_path / "server", config)
    env = {
        "RMOS_NATS_TLS_CA": str(pki.ca),
        "RMOS_NATS_TLS_CERT": str(pki.client_cert),
        "RMOS_NATS_TLS_KEY": str(pki.client_key),
    }
    secrets = [pki.key_body()]
    worker, client, run_id = await stores_an_event(
        tmp_path, Method(server.url, env, secrets), "mtls"
    )
    try:
        await get_works(run_id, server.url, env, secrets)
        code, out = await command(
            "get", run_id, "--nats-url", server.url, env={"RMOS_NATS_TLS_CA": str(pki.ca)}
        )
        assert code != 0, out
        [line] = out.splitlines()
        assert line.startswith(f"error: cannot reach NATS at {server.url}"), out
        assert "client certificate" in line, out
    finally:
        await stopped(worker, client, secrets)
