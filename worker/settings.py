"""The worker's one settings class: environment ``RMOS_*``, overridden by CLI flags."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from contracts.subjects import Subjects

KIB = 1024


class Settings(BaseSettings):
    """Every knob of a worker process. Built once in the CLI and passed down."""

    model_config = SettingsConfigDict(env_prefix="RMOS_", extra="ignore", frozen=True)

    nats_url: str | None = Field(
        default=None, description="NATS server URL; unset starts an embedded nats-server."
    )
    data_dir: Path = Field(default=Path("data"), description="Artifacts, blobs, embedded store.")
    subject_prefix: str = Field(default="rmos.runs", pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
    stream_prefix: str = Field(default="RMOS", pattern=r"^[A-Za-z0-9_-]+$")
    max_event_bytes: int = Field(default=512 * KIB, gt=0)
    max_blob_bytes: int = Field(default=768 * KIB, gt=0)
    explain_timeout_s: float = Field(default=300.0, gt=0)
    explain_max_attempts: int = Field(default=3, ge=1)

    batch_size: int = Field(default=256, ge=1, le=1000, description="Events per group commit.")
    batch_linger_s: float = Field(
        default=0.002, ge=0, description="How long a batch waits for company after its first event."
    )
    ack_wait_s: float = Field(default=30.0, gt=0)
    max_deliver: int = Field(default=8, ge=2)
    max_ack_pending: int = Field(default=2000, ge=1)
    nak_base_delay_s: float = Field(default=0.5, gt=0)
    nak_max_delay_s: float = Field(default=30.0, gt=0)
    publish_timeout_s: float = Field(default=5.0, gt=0)
    graceful_timeout_s: float = Field(default=15.0, gt=0)

    @property
    def subjects(self) -> Subjects:
        return Subjects(prefix=self.subject_prefix, stream_prefix=self.stream_prefix)
