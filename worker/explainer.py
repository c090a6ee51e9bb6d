"""The reference explainer: the example an explainer team copies.

It consumes ``rmos.runs.v1.explain.requested`` with the durable pull consumer ``rmos-explainer``
(start several: they share the work), writes an explanation of the run, stores the full text as
a content-addressed attachment (``attachments.put``), and answers with a patch on
``explain.patch.<run_id>`` (``Nats-Msg-Id: patch:<request_id>``): ``READY`` with a summary, or
``ERROR`` when no explanation can be made. The worker ignores late, repeated and stale patches,
so a redelivered request is harmless.

The text comes from :class:`RuleModel`, deterministic and local. A real model plugs in as any
object with the same ``explain(run) -> Explanation`` method (see :class:`Model`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import nats.errors
import nats.js.errors
from faststream import AckPolicy, FastStream
from faststream.nats import JStream, NatsMessage, PullSub
from nats.js.api import ConsumerConfig

from contracts.subjects import EXPLAINER_CONSUMER, Subjects
from worker import tracing
from worker.broker import Broker
from worker.client import RunsClient
from worker.connection import DEFAULT_CONNECT_TIMEOUT_S, ConnectError, connection_name, servers
from worker.core.timefmt import utc_now, utc_text
from worker.output import Exit

log = logging.getLogger(__name__)
EXPLAINER_ID = "rmos-reference-explainer"
VERSION = "1"
STREAM_NOT_FOUND = 10059  # JSStreamNotFoundErr
STREAM_POLL_S = 2.0


@dataclass(frozen=True, slots=True)
class Explanation:
    summary: str  # 1-4000 characters, shown with the run
    text: str  # the full explanation, stored as an attachment


class Model(Protocol):
    """The plug-in point: whatever turns a run artifact into an explanation."""

    def explain(self, run: dict[str, Any]) -> Explanation: ...


class RuleModel:
    """Explains a run from its decision, feasibility, warnings and drift, deterministically."""

    def explain(self, run: dict[str, Any]) -> Explanation:
        decision = run.get("decision", {})
        lines = [
            f"Run {run['run_id']} ({run['event_type']} of {run['tool_id']}, mode {run['mode']}) "
            f"was recorded {run['status']} with risk level {decision.get('risk_level', 'unknown')}"
            + (f" and score {decision['score']}." if "score" in decision else ".")
        ]
        if run.get("meta", {}).get("guard"):
            guard = run["meta"]["guard"]
            lines.append(
                f"The engine claimed {guard['claimed_status']}, but the safety guard blocked it: "
                + ", ".join(guard["violations"])
                + "."
            )
        if decision.get("block_reason"):
            lines.append(f"Block reason: {decision['block_reason']}.")
        lines += [f"Warning: {w}." for w in decision.get("warnings", [])]
        lines += [f"Error: {e}." for e in run.get("errors", [])]
        feasibility = run.get("feasibility")
        if isinstance(feasibility, dict) and feasibility:
            facts = ", ".join(f"{k} = {json.dumps(v)}" for k, v in sorted(feasibility.items()))
            lines.append(f"Feasibility: {facts[:1000]}.")
        drift = run.get("drift_summary") or {}
        if drift.get("changed"):
            lines.append("Changed since the parent run: " + ", ".join(drift["changed"]) + ".")
        elif drift.get("parent") == "NOT_FOUND":
            lines.append("Its parent run is not in the store.")
        text = "\n".join(lines)
        return Explanation(summary=" ".join(lines[:3])[:4000], text=text)


class ReferenceExplainer:
    """One explainer process: a FastStream app around :meth:`handle`. ``nats`` is a NATS URL
    (no credentials but the URL's), or what ``worker.connection.connect_options(settings,
    "explainer")`` gives (the settings' user, token, nkey, creds and TLS)."""

    def __init__(
        self,
        nats: str | Mapping[str, Any],
        subjects: Subjects,
        model: Model | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
    ) -> None:
        self.subjects = subjects
        self.model = model or RuleModel()
        if isinstance(nats, str):
            nats = {"servers": servers(nats), "name": connection_name("explainer")}
        self.broker = Broker(
            nats,
            first_connect_timeout=connect_timeout,  # then ConnectError: run() exits 1
            max_reconnect_attempts=-1,
            log_level=logging.DEBUG,
        )
        self.app = FastStream(self.broker)
        self.broker.subscriber(
            subjects.explain_requested,
            # the worker owns the stream: bind to it, never redeclare it with fewer subjects
            stream=JStream(subjects.explain_stream, declare=False),
            durable=EXPLAINER_CONSUMER,
            config=ConsumerConfig(max_deliver=5, ack_wait=60),
            pull_sub=PullSub(batch_size=1, timeout=5.0),
            ack_policy=AckPolicy.NACK_ON_ERROR,  # a failure comes back, a bounded number of times
        )(self.handle)

    async def handle(self, body: dict[str, Any], msg: NatsMessage) -> None:
        """Explain one requested run and patch the answer back, in the request's trace."""
        attributes = {"rmos.run_id": body["run"]["run_id"], "rmos.request_id": body["request_id"]}
        with tracing.continued(msg.headers, "rmos.explain", attributes=attributes):
            await self._explain(body)

    async def _explain(self, body: dict[str, Any]) -> None:
        client = RunsClient(self.broker.config.connection_state.connection, self.subjects)
        run = body["run"]
        try:
            explanation = self.model.explain(run)
        except Exception as exc:  # the model failed: say so, the run goes to ERROR
            log.exception("no explanation for %s", run["run_id"])
            await self._patch(client, body, status="ERROR", error=f"explainer failed: {exc!r}")
            return
        stored = await client.put_attachment(
            explanation.text.encode(),
            kind="explanation",
            mime="text/plain",
            filename=f"{run['run_id']}-explanation.txt",
        )
        advisory = {
            "advisory_id": f"expl-{body['request_id']}",
            "kind": "explanation",
            "created_at_utc": utc_text(utc_now()),
            "request_id": body["request_id"],
            "engine_id": EXPLAINER_ID,
            "engine_version": VERSION,
            "sha256": stored.sha256,
        }
        await self._patch(
            client, body, status="READY", summary=explanation.summary, advisory=advisory
        )

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT; exit 4 when NATS cannot be reached within the connect
        timeout (one line says why). Started before the worker, it waits for the worker's
        stream (saying so once) instead of failing."""
        try:
            await self.broker.connect()
            if not await self._stream_declared():
                await self.broker.stop()
                return Exit.OK  # stopped while waiting
            await self.app.run()
        except ConnectError as exc:
            log.error("cannot start: %s", exc)
            await self.broker.stop()
            return Exit.UNREACHABLE
        return Exit.OK

    async def _stream_declared(self) -> bool:
        """Wait until the worker has declared the explain stream; False if SIGTERM or SIGINT
        comes first. Asks for this explainer's consumer, which its role may read (CONTRACT
        section 8): "stream not found" means the worker has not run yet."""
        js = self.broker.config.connection_state.stream
        stream = self.subjects.explain_stream
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        try:
            waiting = False
            while not stopping.is_set():
                try:
                    await js.consumer_info(stream, EXPLAINER_CONSUMER)
                    break
                except nats.js.errors.NotFoundError as exc:
                    if exc.err_code != STREAM_NOT_FOUND:
                        break  # the stream is there; the consumer is made at start
                except (nats.errors.Error, TimeoutError) as exc:  # reconnecting: try again
                    log.debug("explain stream not checked yet: %r", exc)
                if not waiting:
                    log.info("waiting for stream %s: `rmos-runs worker` declares it", stream)
                    waiting = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), STREAM_POLL_S)
            if waiting and not stopping.is_set():
                log.info("stream %s found; explaining", stream)
            return not stopping.is_set()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    async def _patch(self, client: RunsClient, request: dict[str, Any], **fields: Any) -> None:
        patch = {
            "schema": "rmos.explanation_patch.v1",
            "run_id": request["run_id"],
            "request_id": request["request_id"],
            "explainer_id": EXPLAINER_ID,
            **fields,
        }
        await client.publish_raw(
            self.subjects.explain_patch(request["run_id"]),
            json.dumps(patch).encode(),
            msg_id=f"patch:{request['request_id']}",
        )
        log.info("patched %s %s", request["run_id"], fields["status"])
