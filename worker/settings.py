"""The worker's one settings class: environment ``RMOS_*``, overridden by CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from contracts.subjects import Subjects

KIB = 1024


class Settings(BaseSettings):
    """Every knob of a worker process. Built once in the CLI and passed down."""

    model_config = SettingsConfigDict(env_prefix="RMOS_", extra="ignore", frozen=True)

    nats_url: str | None = Field(
        default=None,
        description="NATS server URL, or a comma-separated list; unset: an embedded nats-server",
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
    metrics_port: int | None = Field(
        default=None, ge=1, le=65535, description="serve GET /metrics here (siblings: +1, +2, ...)"
    )
    metrics_host: str = Field(default="127.0.0.1", description="address the metrics port binds")
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

    @property
    def subjects(self) -> Subjects:
        return Subjects(prefix=self.subject_prefix, stream_prefix=self.stream_prefix)
