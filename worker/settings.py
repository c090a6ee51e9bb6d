"""The worker's one settings class: environment ``RMOS_*``, overridden by CLI flags."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

from contracts.subjects import Subjects
from worker.signing import DEFAULT_NAME, SigningKeyError, load_private

KIB = 1024
T = TypeVar("T")
CONNECTION_SETTINGS = (  # besides nats_url: how every program authenticates and encrypts
    "nats_user",
    "nats_password",
    "nats_token",
    "nats_nkey_seed",
    "nats_creds",
    "nats_tls_ca",
    "nats_tls_cert",
    "nats_tls_key",
)
_AUTH_WAYS = ("nats_user", "nats_token", "nats_nkey_seed", "nats_creds")  # user: and password


class Settings(BaseSettings):
    """Every knob of a worker process. Built once in the CLI and passed down."""

    model_config = SettingsConfigDict(
        env_prefix="RMOS_",
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,  # secrets
    )

    nats_url: str | None = Field(
        default=None,
        description="NATS server URL, or a comma-separated list; unset: an embedded nats-server",
    )
    # How to authenticate and encrypt (CONTRACT section 8, "Connections"; worker.connection):
    # at most one way to authenticate; an explicit one wins over a URL's user information.
    nats_user: str | None = Field(default=None, description="NATS user (with RMOS_NATS_PASSWORD)")
    nats_password: SecretStr | None = Field(
        default=None, description="the NATS user's password; never shown"
    )
    nats_token: SecretStr | None = Field(default=None, description="NATS token; never shown")
    nats_nkey_seed: Path | None = Field(
        default=None, description="file holding the NATS user's nkey seed (SU...)"
    )
    nats_creds: Path | None = Field(
        default=None, description="NATS .creds file: the user's JWT and nkey seed"
    )
    nats_tls_ca: Path | None = Field(
        default=None, description="CA certificates (PEM) NATS servers are verified with"
    )
    nats_tls_cert: Path | None = Field(
        default=None, description="client certificate (PEM), with RMOS_NATS_TLS_KEY"
    )
    nats_tls_key: Path | None = Field(
        default=None,
        validate_default=True,  # a certificate without its key is an error
        description="the client certificate's private key (PEM, unencrypted)",
    )
    store: Literal["files", "jetstream"] = Field(
        default="files",
        description="where runs and blobs live: the data dir, or JetStream (CONTRACT section 8)",
    )
    store_replicas: int | None = Field(
        default=None,
        ge=1,
        le=5,
        description="replicas of the JetStream store and streams; unset: 3 on a cluster, else 1",
    )
    data_dir: Path = Field(
        default=Path("data"), description="artifacts, blobs and the embedded server's store"
    )
    subject_prefix: str = Field(
        default="rmos.runs",
        pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$",
        description="first tokens of every subject (another deployment, another prefix)",
    )
    stream_prefix: str = Field(
        default="RMOS", pattern=r"^[A-Za-z0-9_-]+$", description="first word of each stream name"
    )
    max_event_bytes: int = Field(
        default=512 * KIB, gt=0, description="larger events are dead-lettered PAYLOAD_TOO_LARGE"
    )
    max_blob_bytes: int = Field(
        default=768 * KIB, gt=0, description="larger attachments are refused PAYLOAD_TOO_LARGE"
    )
    explain_timeout_s: float = Field(
        default=300.0, gt=0, description="a PENDING explanation is requested again after this"
    )
    explain_max_attempts: int = Field(
        default=3, ge=1, description="requests per explanation before it is set ERROR timed out"
    )
    explainer_model: str = Field(
        default="worker.reference:RuleExplainer",
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$",
        description="what `rmos-runs explainer` runs: package.module:attr (worker.explainer)",
    )
    explainer_concurrency: int = Field(
        default=4, ge=1, description="explanations one explainer process works on at once"
    )
    explainer_timeout_s: float = Field(
        default=120.0, gt=0, description="an explanation not made by then is patched ERROR"
    )
    metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="serve GET /metrics, /healthz, /readyz here (one port for a process group)",
    )
    metrics_host: str = Field(default="127.0.0.1", description="address the metrics port binds")
    log_format: Literal["text", "json"] = Field(
        default="text", description="log lines as text, or one JSON object a line"
    )
    processes: int = Field(
        default=1, ge=1, le=64, description="worker processes sharing the data dir (one a core)"
    )
    batch_size: int = Field(
        default=256, ge=1, le=1000, description="most events made durable by one group commit"
    )
    batch_linger_s: float = Field(
        default=0.002, ge=0, description="a batch ends when no event comes for this long (or full)"
    )
    ack_wait_s: float = Field(
        default=30.0, gt=0, description="unacked events come back after this (consumer ack_wait)"
    )
    max_deliver: int = Field(
        default=8, ge=2, description="deliveries before an event is dead-lettered MAX_DELIVERIES"
    )
    max_ack_pending: int = Field(
        default=2000, ge=1, description="events in flight at once (bounds over-fetching)"
    )
    nak_base_delay_s: float = Field(
        default=0.5, gt=0, description="first retry delay after a transient failure; doubles"
    )
    nak_max_delay_s: float = Field(default=30.0, gt=0, description="cap of the retry delay")
    store_retry_max_s: float = Field(
        default=5.0,
        gt=0,
        description="while the store is down, the held write is retried at most this far apart",
    )
    connect_timeout_s: float = Field(
        default=20.0, gt=0, description="a first connection to NATS gives up after this (exit 1)"
    )
    publish_timeout_s: float = Field(
        default=5.0, gt=0, description="wait for JetStream's PubAck of a dead letter"
    )
    graceful_timeout_s: float = Field(
        default=15.0, gt=0, description="on SIGTERM, wait this long for in-flight work"
    )
    signing_key: Path | None = Field(
        default=None,
        description="Ed25519 PEM key that signs log checkpoints; unset: DATA_DIR/signing.key, "
        "made on first start",
    )
    checkpoint_interval_s: float = Field(
        default=2.0, gt=0, description="while the log grows, a signed checkpoint this often"
    )

    @field_validator(*CONNECTION_SETTINGS, mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("nats_password")
    @classmethod
    def _password_needs_user(
        cls, value: SecretStr | None, info: ValidationInfo
    ) -> SecretStr | None:
        if value is not None and info.data.get("nats_user") is None:
            raise _invalid("RMOS_NATS_PASSWORD is set without RMOS_NATS_USER")
        return value

    @field_validator("nats_token", "nats_nkey_seed", "nats_creds")
    @classmethod
    def _one_way_to_authenticate(cls, value: T, info: ValidationInfo) -> T:
        if value is None or info.field_name is None:
            return value
        for earlier in _AUTH_WAYS[: _AUTH_WAYS.index(info.field_name)]:
            if info.data.get(earlier) is not None:
                both = f"RMOS_{info.field_name.upper()} and RMOS_{earlier.upper()}"
                raise _invalid(f"{both} are both set: authenticate one way only")
        return value

    @field_validator("nats_nkey_seed")
    @classmethod
    def _a_seed(cls, value: Path | None) -> Path | None:
        if value is not None and not _is_seed(_read(value).strip()):
            raise _invalid(f"{value} does not hold an nkey seed")
        return value

    @field_validator("nats_creds")
    @classmethod
    def _a_creds_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            _check_creds(value, _read(value))
        return value

    @field_validator("nats_tls_ca")
    @classmethod
    def _a_ca(cls, value: Path | None) -> Path | None:
        if value is not None:
            _read(value)
            try:
                tls_context(value, None, None)
            except ValueError as exc:
                raise _invalid(str(exc)) from None
        return value

    @field_validator("nats_tls_cert")
    @classmethod
    def _a_cert(cls, value: Path | None) -> Path | None:
        if value is not None:
            _read(value)
        return value

    @field_validator("nats_tls_key")
    @classmethod
    def _a_key(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if "nats_tls_cert" not in info.data or "nats_tls_ca" not in info.data:
            return value  # the CA or certificate setting is wrong already: said there
        cert = info.data["nats_tls_cert"]
        if value is None:
            if cert is not None:
                raise _invalid("RMOS_NATS_TLS_CERT is set without RMOS_NATS_TLS_KEY: give both")
            return value
        _read(value)
        if cert is None:
            raise _invalid("RMOS_NATS_TLS_KEY is set without RMOS_NATS_TLS_CERT: give both")
        try:
            tls_context(info.data["nats_tls_ca"], cert, value)
        except ValueError as exc:
            raise _invalid(str(exc)) from None
        return value

    @field_validator("signing_key")
    @classmethod
    def _a_signing_key(cls, value: Path | None) -> Path | None:
        if value is not None:
            try:
                load_private(value)
            except SigningKeyError as exc:
                raise _invalid(str(exc)) from None
        return value

    @property
    def signing_key_path(self) -> Path:
        """The key that signs checkpoints: ``signing_key``, or the data dir's own."""
        return self.signing_key or self.data_dir / DEFAULT_NAME

    @property
    def subjects(self) -> Subjects:
        return Subjects(prefix=self.subject_prefix, stream_prefix=self.stream_prefix)

    @property
    def tls_configured(self) -> bool:
        """Any TLS setting given: every connection then uses TLS, whatever the URL's scheme."""
        return any(
            path is not None for path in (self.nats_tls_ca, self.nats_tls_cert, self.nats_tls_key)
        )


def tls_context(ca: Path | None, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    """The TLS context of a NATS connection: servers verified with ``ca`` (else the system's
    CAs), the client certificate ``cert`` with its ``key`` when given. ValueError (one line,
    nothing of the key) when a file is not what it should be."""
    try:
        context = ssl.create_default_context(cafile=None if ca is None else str(ca))
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"{ca}: no PEM CA certificate ({_reason(exc)})") from None
    if cert is not None and key is not None:

        def encrypted() -> bytes:
            raise ValueError(f"{key}: the private key is encrypted; give it unencrypted")

        try:
            context.load_cert_chain(cert, key, password=encrypted)
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(
                f"{cert} and {key}: not a PEM certificate and its private key ({_reason(exc)})"
            ) from None
    return context


def _reason(exc: ssl.SSLError | OSError) -> str:
    if isinstance(exc, ssl.SSLError):  # OpenSSL's reason, e.g. KEY_VALUES_MISMATCH
        return (exc.reason or "unreadable PEM").replace("_", " ").lower()
    return exc.strerror or str(exc)


def _invalid(text: str) -> PydanticCustomError:
    """A settings error as the CLI prints it (one line; never the value: it may be a secret)."""
    return PydanticCustomError("rmos_setting", "{text}", {"text": text})


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _invalid(f"cannot read {path}: {exc.strerror or exc}") from None


def _is_seed(seed: bytes) -> bool:
    import nkeys  # type: ignore[import-untyped]  # only when a seed is configured

    try:
        key = nkeys.from_seed(bytearray(seed))
    except Exception:  # nkeys raises its own errors, and binascii's
        return False
    key.wipe()
    return True


def _check_creds(path: Path, text: bytes) -> None:
    """What nats-py reads of a ``.creds`` file: the line after each BEGIN line (nats-py loops
    for ever on a file without the JWT)."""
    lines = text.splitlines(keepends=True)

    def after(marker: bytes) -> bytes | None:
        for i, line in enumerate(lines[:-1]):
            if marker in line:
                return lines[i + 1].removesuffix(b"\n")
        return None

    jwt = after(b"BEGIN NATS USER JWT")
    seed = after(b"BEGIN USER NKEY SEED")
    if not jwt or not jwt.strip():
        raise _invalid(f"{path}: no user JWT (not a .creds file)")
    if seed is None or not _is_seed(seed):
        raise _invalid(f"{path}: no user nkey seed (not a .creds file)")
