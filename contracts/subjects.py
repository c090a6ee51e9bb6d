"""Subject and stream names of CONTRACT section 0, derived from the two deployment prefixes."""

from __future__ import annotations

from dataclasses import dataclass

EVENTS_CONSUMER = "rmos-worker-events"
PATCHES_CONSUMER = "rmos-worker-patches"
EXPLAINER_CONSUMER = "rmos-explainer"


@dataclass(frozen=True)
class Subjects:
    """Every subject and stream name of one deployment."""

    prefix: str = "rmos.runs"
    stream_prefix: str = "RMOS"

    @property
    def root(self) -> str:
        return f"{self.prefix}.v1"

    @property
    def events(self) -> str:
        return f"{self.root}.events"

    def event(self, source: str) -> str:
        return f"{self.events}.{source}"

    @property
    def explain(self) -> str:
        return f"{self.root}.explain"

    @property
    def explain_requested(self) -> str:
        return f"{self.explain}.requested"

    def explain_patch(self, run_id: str) -> str:
        return f"{self.explain}.patch.{run_id}"

    def explain_status(self, run_id: str) -> str:
        return f"{self.explain}.status.{run_id}"

    @property
    def dlq(self) -> str:
        return f"{self.root}.dlq"

    def dead_letter(self, code: str) -> str:
        return f"{self.dlq}.{code}"

    @property
    def api(self) -> str:
        return f"{self.root}.api"

    def api_op(self, op: str) -> str:
        return f"{self.api}.{op}"

    @property
    def checkpoints(self) -> str:
        return f"{self.root}.checkpoints"

    @property
    def events_stream(self) -> str:
        return f"{self.stream_prefix}_RUN_EVENTS"

    @property
    def explain_stream(self) -> str:
        return f"{self.stream_prefix}_EXPLAIN"

    @property
    def dlq_stream(self) -> str:
        return f"{self.stream_prefix}_DLQ"

    @property
    def checkpoints_stream(self) -> str:
        return f"{self.stream_prefix}_CHECKPOINTS"

    def streams(self) -> dict[str, str]:
        """Stream name → the one subject filter it owns."""
        return {
            self.events_stream: f"{self.events}.>",
            self.explain_stream: f"{self.explain}.>",
            self.dlq_stream: f"{self.dlq}.>",
            self.checkpoints_stream: self.checkpoints,
        }

    def source_of(self, subject: str) -> str | None:
        """The ``<source>`` token of an event subject, or None when the subject is not one."""
        head, _, source = subject.rpartition(".")
        return source if head == self.events and source else None
