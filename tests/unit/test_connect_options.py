"""The connection settings (CONTRACT section 8, "Connections"): what each program connects with,
the settings errors an operator reads, and no secret in any text."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import nats.errors
import nkeys  # type: ignore[import-untyped]
import pytest
from pydantic import ValidationError

from worker import cli
from worker.connection import _Attempt, _message, connect_options, connection_name
from worker.processes import connection_env
from worker.settings import Settings

PASSWORD = "pw-Zq81xv"
TOKEN = "tok-Hh27Kd"
URL = "nats://127.0.0.1:4222"


@pytest.fixture(autouse=True)
def _no_rmos_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in os.environ:
        if name.startswith("RMOS_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A self-signed certificate and its key, plain and encrypted (EC keys: fast)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make certificates")
    directory = tmp_path_factory.mktemp("pem")
    files = {name: directory / f"{name}.pem" for name in ("cert", "key", "encrypted")}
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=test",
         "-keyout", str(files["key"]), "-out", str(files["cert"])],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    subprocess.run(
        ["openssl", "pkey", "-in", str(files["key"]), "-aes256", "-passout", "pass:x",
         "-out", str(files["encrypted"])],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return files


def user_seed(directory: Path) -> Path:
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    path = directory / "user.nk"
    path.write_bytes(seed + b"\n")
    return path


def invalid(**given: object) -> str:
    """The one error of settings ``given``, as the CLI prints it (field: message)."""
    with pytest.raises(ValidationError) as info:
        Settings(**given)  # type: ignore[arg-type]
    errors = info.value.errors(include_input=False)
    assert len(errors) == 1, errors
    return f"{errors[0]['loc'][0]}: {errors[0]['msg']}"


class TestConnectOptions:
    def test_plain(self) -> None:
        options = connect_options(Settings(nats_url=URL), "worker")
        assert options == {"servers": [URL], "name": connection_name("worker")}

    def test_name_says_program_host_and_process(self) -> None:
        assert connection_name("cli") == f"rmos-cli@{socket.gethostname()}:{os.getpid()}"

    def test_url_argument_wins_over_the_setting(self) -> None:
        options = connect_options(Settings(nats_url=URL), "cli", "nats://a:1, nats://b:2")
        assert options["servers"] == ["nats://a:1", "nats://b:2"]

    def test_no_url(self) -> None:
        with pytest.raises(ValueError, match="no NATS server URL"):
            connect_options(Settings(), "cli")

    def test_url_user_information_kept_without_settings(self) -> None:
        url = f"nats://alice:{PASSWORD}@h:4222"
        assert connect_options(Settings(nats_url=url), "cli")["servers"] == [url]

    def test_user_and_password_win_over_the_urls(self) -> None:
        settings = Settings(
            nats_url="nats://bob:wrong@h1:4222,tls://tok@h2:4222",
            nats_user="alice",
            nats_password=PASSWORD,
        )
        options = connect_options(settings, "worker")
        assert options["servers"] == ["nats://h1:4222", "tls://h2:4222"]
        assert (options["user"], options["password"]) == ("alice", PASSWORD)

    def test_token(self) -> None:
        settings = Settings(nats_url="nats://old@h:4222", nats_token=TOKEN)
        options = connect_options(settings, "worker")
        assert (options["servers"], options["token"]) == (["nats://h:4222"], TOKEN)

    def test_nkey_seed_and_creds_are_paths(self, tmp_path: Path) -> None:
        seed = user_seed(tmp_path)
        options = connect_options(Settings(nats_url=URL, nats_nkey_seed=seed), "worker")
        assert options["nkeys_seed"] == str(seed)
        creds = tmp_path / "user.creds"
        creds.write_bytes(
            b"-----BEGIN NATS USER JWT-----\neyJhbGciOi.x.y\n------END NATS USER JWT------\n\n"
            b"-----BEGIN USER NKEY SEED-----\n"
            + seed.read_bytes()
            + b"------END USER NKEY SEED------\n"
        )
        options = connect_options(Settings(nats_url=URL, nats_creds=creds), "worker")
        assert options["user_credentials"] == str(creds)

    def test_tls_for_tls_urls(self) -> None:
        options = connect_options(Settings(nats_url="tls://h:4222"), "worker")
        assert isinstance(options["tls"], ssl.SSLContext)
        assert options["tls"].verify_mode == ssl.CERT_REQUIRED

    def test_tls_for_any_scheme_with_a_tls_setting(self, pem: dict[str, Path]) -> None:
        settings = Settings(
            nats_url=URL,
            nats_tls_ca=pem["cert"],
            nats_tls_cert=pem["cert"],
            nats_tls_key=pem["key"],
        )
        context = connect_options(settings, "worker")["tls"]
        assert isinstance(context, ssl.SSLContext)
        assert context.get_ca_certs()[0]["subject"] == ((("commonName", "test"),),)


class TestSettingsErrors:
    """Wrong connection settings: one line each, naming the setting, no value in it."""

    def test_password_without_user(self) -> None:
        text = invalid(nats_password=PASSWORD)
        assert text == "nats_password: RMOS_NATS_PASSWORD is set without RMOS_NATS_USER"

    def test_two_ways_to_authenticate(self, tmp_path: Path) -> None:
        text = invalid(nats_user="alice", nats_password=PASSWORD, nats_token=TOKEN)
        assert text == (
            "nats_token: RMOS_NATS_TOKEN and RMOS_NATS_USER are both set: authenticate one way only"
        )
        text = invalid(nats_token=TOKEN, nats_nkey_seed=user_seed(tmp_path))
        assert text.startswith("nats_nkey_seed: RMOS_NATS_NKEY_SEED and RMOS_NATS_TOKEN")

    def test_certificate_without_key_and_key_without_certificate(
        self, pem: dict[str, Path]
    ) -> None:
        assert invalid(nats_tls_cert=pem["cert"]) == (
            "nats_tls_key: RMOS_NATS_TLS_CERT is set without RMOS_NATS_TLS_KEY: give both"
        )
        assert invalid(nats_tls_key=pem["key"]) == (
            "nats_tls_key: RMOS_NATS_TLS_KEY is set without RMOS_NATS_TLS_CERT: give both"
        )

    def test_unreadable_files(self, tmp_path: Path) -> None:
        missing = tmp_path / "missing.pem"
        for name in ("nats_nkey_seed", "nats_creds", "nats_tls_ca", "nats_tls_cert"):
            text = invalid(**{name: missing})
            assert text == f"{name}: cannot read {missing}: No such file or directory"

    def test_files_that_are_not_what_they_should_be(
        self, pem: dict[str, Path], tmp_path: Path
    ) -> None:
        assert invalid(nats_nkey_seed=pem["key"]) == (
            f"nats_nkey_seed: {pem['key']} does not hold an nkey seed"
        )
        assert invalid(nats_creds=pem["key"]).startswith(f"nats_creds: {pem['key']}: no user JWT")
        assert invalid(nats_tls_ca=pem["key"]).startswith(
            f"nats_tls_ca: {pem['key']}: no PEM CA certificate"
        )
        text = invalid(nats_tls_cert=pem["key"], nats_tls_key=pem["key"])
        assert "not a PEM certificate and its private key" in text
        text = invalid(nats_tls_cert=pem["cert"], nats_tls_key=pem["encrypted"])
        assert text == (
            f"nats_tls_key: {pem['encrypted']}: the private key is encrypted; give it unencrypted"
        )

    def test_empty_is_unset(self) -> None:
        settings = Settings(nats_user="", nats_token=" ", nats_tls_ca="")
        assert (settings.nats_user, settings.nats_token, settings.nats_tls_ca) == (None, None, None)

    def test_the_cli_exits_2_with_one_line(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        monkeypatch.setenv("RMOS_NATS_TOKEN", TOKEN)
        monkeypatch.setenv("RMOS_NATS_USER", "alice")
        assert cli.main(["get", "run_x", "--nats-url", URL]) == 2
        err = capsys.readouterr().err
        assert err.splitlines() == [
            "rmos-runs: invalid setting nats_token (RMOS_NATS_TOKEN): RMOS_NATS_TOKEN and "
            "RMOS_NATS_USER are both set: authenticate one way only"
        ]


class TestNoSecretShown:
    def test_repr_of_the_settings(self) -> None:
        settings = Settings(nats_user="alice", nats_password=PASSWORD)
        assert PASSWORD not in repr(settings)
        assert PASSWORD not in str(settings)
        assert TOKEN not in repr(Settings(nats_token=TOKEN))

    @pytest.mark.parametrize(
        ("url", "given", "secret"),
        [
            (f"nats://alice:{PASSWORD}@h:4222", {}, PASSWORD),
            (f"nats://{TOKEN}@h:4222", {}, TOKEN),
            (URL, {"nats_user": "alice", "nats_password": PASSWORD}, PASSWORD),
            (URL, {"nats_token": TOKEN}, TOKEN),
            (f"nats://alice:{PASSWORD}x@h:4222", {"nats_token": TOKEN}, TOKEN),
        ],
    )
    def test_a_connect_error(self, url: str, given: dict[str, str], secret: str) -> None:
        """Even an error that quotes the secret (a server echoing it, say) shows it masked."""
        options = connect_options(Settings(nats_url=url, **given), "cli")  # type: ignore[arg-type]
        attempt = _Attempt(servers=1)
        attempt.failed(nats.errors.Error(f"nats: 'Authorization Violation' for {secret}"))
        attempt.ended(OSError(f"reset while sending {secret}"))
        text = _message(options.pop("servers"), 3.0, attempt, options)
        assert secret not in text
        assert "authorization violation" in text

    def test_siblings_get_the_same_connection_settings(
        self, monkeypatch: pytest.MonkeyPatch, pem: dict[str, Path]
    ) -> None:
        """Through their environment (a command line is readable by every user of the host)."""
        settings = Settings(nats_user="alice", nats_password=PASSWORD, nats_tls_ca=pem["cert"])
        monkeypatch.setenv("RMOS_NATS_TOKEN", "stale")
        env = connection_env(settings, f"nats://alice:{PASSWORD}@h:4222")
        assert env["RMOS_NATS_URL"] == f"nats://alice:{PASSWORD}@h:4222"
        assert (env["RMOS_NATS_USER"], env["RMOS_NATS_PASSWORD"]) == ("alice", PASSWORD)
        assert env["RMOS_NATS_TLS_CA"] == str(pem["cert"])
        assert "RMOS_NATS_TOKEN" not in env
        assert env["PATH"] == os.environ["PATH"]
