"""``rmos-runs permissions ROLE``: the least NATS permissions of each role (CONTRACT section 8).

:func:`role_permissions` is the pure function: a role and a deployment's :class:`Subjects` in,
the subjects its user may publish to and subscribe to out. Each entry is there because a
program of this repository uses it (found by running each program under exactly these
permissions against a real nats-server: tests/integration/test_permissions.py), and nothing
else is:

- ``worker``: declares and updates its three streams and its two durable consumers, pulls and
  acks through them, publishes dead letters, explanation requests and status changes, watches
  JetStream's max-deliveries advisory of its events consumer, serves ``api.>`` and publishes
  the replies; and for the jetstream store
  its KV buckets, history stream and object store (writes, leader reads, the ``list``
  projection's ephemeral consumer, the object store's ordered consumer with its flow
  control). One list serves both stores.
- ``engine``: publishes run events (``events.*``, or ``events.<source>`` only) and requests
  ``create``, ``get`` and ``attachments.put``.
- ``explainer``: looks up, creates (filter pinned to ``explain.requested``) and pulls from its
  durable consumer ``rmos-explainer`` only, acks its messages, publishes patches, requests
  ``get``, ``attachments.put`` and ``attachments.get``.
- ``operator``: every API operation, and ``dlq list`` / ``dlq replay``: the dead-letter
  stream's info and messages, and a replay's publish to the original event or patch subject.

Every role subscribes to ``_INBOX.>``: replies to its requests, JetStream's PubAcks and API
answers, and the messages a pull consumer delivers all come back on the client's inbox.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from typing import Literal, TextIO, get_args

from contracts.subjects import (
    EVENTS_CONSUMER,
    EXPLAINER_CONSUMER,
    PATCHES_CONSUMER,
    Subjects,
)

Role = Literal["worker", "engine", "explainer", "operator"]
ROLES: tuple[Role, ...] = get_args(Role)
ROLE_HELP = {
    "worker": "the ingestion worker (everything it owns, both stores; also `migrate`)",
    "engine": "a feasibility engine: publish run events, request create, get, attachments.put",
    "explainer": "an explainer: its durable consumer, patches, get, attachments.put/get",
    "operator": "the client commands: every API operation, dlq list and dlq replay",
}
SOURCE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # CONTRACT section 2: an engine's id
INBOX = "_INBOX.>"  # nats-py's (and every client library's) default inbox prefix
JS_API = "$JS.API"


@dataclass(frozen=True)
class Permissions:
    """What one NATS user may publish to and subscribe to (allow lists, nothing else)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]

    def as_json(self) -> dict[str, dict[str, list[str]]]:
        """``{"publish": {"allow": [...]}, "subscribe": {"allow": [...]}}``."""
        return {
            "publish": {"allow": list(self.publish)},
            "subscribe": {"allow": list(self.subscribe)},
        }

    def server_config(self, indent: str = "") -> str:
        """The ``permissions: {...}`` entry of a user in a nats-server ``authorization``
        block (or an account's ``users``), each line prefixed with ``indent``."""
        lines = ["permissions: {"]
        for kind, allowed in (("publish", self.publish), ("subscribe", self.subscribe)):
            lines.append(f"  {kind}: {{ allow: [")
            quoted = [f"    {json.dumps(subject)}" for subject in allowed]
            lines += [line + ("," if n < len(quoted) - 1 else "") for n, line in enumerate(quoted)]
            lines.append("  ] }")
        lines.append("}")
        return "\n".join(indent + line for line in lines)


@dataclass(frozen=True)
class StoreNames:
    """The jetstream store's buckets and streams (``worker/store/jetstream.py``)."""

    runs_bucket: str
    blob_meta_bucket: str
    blobs_bucket: str
    history_stream: str
    history_subject: str  # one message per revision on ``<this>.<run_id>``
    log_stream: str
    log_subject: str  # the Merkle log: one leaf a message on ``<this>.<run_id>``

    @classmethod
    def of(cls, subjects: Subjects) -> StoreNames:
        prefix = subjects.stream_prefix
        return cls(
            runs_bucket=f"{prefix}_RUNS",
            blob_meta_bucket=f"{prefix}_BLOB_META",
            blobs_bucket=f"{prefix}_BLOBS",
            history_stream=f"{prefix}_RUN_HISTORY",
            history_subject=f"{subjects.root}.store.history",
            log_stream=f"{prefix}_LOG",
            log_subject=f"{subjects.root}.store.log",
        )


def role_permissions(role: Role, subjects: Subjects, source: str | None = None) -> Permissions:
    """The least permissions of ``role`` under ``subjects``' prefixes; ``source`` narrows an
    engine to ``events.<source>``. ``ValueError`` for an unknown role, a bad source, or a
    source given to another role than ``engine``."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    if source is not None and role != "engine":
        raise ValueError("--source narrows the engine role only")
    if source is not None and not SOURCE.match(source):
        raise ValueError(f"bad source {source!r}: 1-64 of A-Z a-z 0-9 _ -")
    if role == "worker":
        publish = _worker_publish(subjects)
        subscribe = [
            f"{subjects.api}.>",  # the API, in the queue group rmos-worker-api
            f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{subjects.events_stream}"
            f".{EVENTS_CONSUMER}",
        ]
    elif role == "engine":
        publish = [
            subjects.event(source) if source else f"{subjects.events}.*",
            *(subjects.api_op(op) for op in ("create", "get", "attachments.put")),
        ]
        subscribe = []
    elif role == "explainer":
        publish = _explainer_publish(subjects)
        subscribe = []
    else:
        dlq = subjects.dlq_stream
        publish = [
            f"{subjects.api}.>",
            f"{JS_API}.STREAM.INFO.{dlq}",  # dlq list: the newest sequences
            f"{JS_API}.STREAM.MSG.GET.{dlq}",  # dlq list and replay: the letters
            f"{subjects.events}.*",  # dlq replay: to the original subject (worker/dlq.py)
            f"{subjects.explain}.patch.*",
            *_audit_publish(subjects),
        ]
        subscribe = []
    return Permissions(tuple(dict.fromkeys(publish)), tuple(dict.fromkeys([*subscribe, INBOX])))


def _reading(stream: str, subject: str) -> list[str]:
    """An ephemeral pull consumer on ``stream`` filtered to ``subject``: made, read, deleted."""
    return [
        f"{JS_API}.CONSUMER.CREATE.{stream}.*.{subject}",
        f"{JS_API}.CONSUMER.MSG.NEXT.{stream}.*",
        f"{JS_API}.CONSUMER.DELETE.{stream}.*",
    ]


def _audit_publish(subjects: Subjects) -> list[str]:
    """``rmos-runs audit``: every checkpoint; with the jetstream store, the log copied, every
    run scanned, and their history read."""
    store = StoreNames.of(subjects)
    runs = f"KV_{store.runs_bucket}"
    return [
        f"{JS_API}.STREAM.INFO.{subjects.checkpoints_stream}",
        *_reading(subjects.checkpoints_stream, subjects.checkpoints),
        f"{JS_API}.STREAM.INFO.{store.log_stream}",
        *_reading(store.log_stream, f"{store.log_subject}.*"),
        *_reading(runs, f"$KV.{store.runs_bucket}.>"),
        f"{JS_API}.STREAM.MSG.GET.{store.history_stream}",
    ]


def _explainer_publish(subjects: Subjects) -> list[str]:
    stream, consumer = subjects.explain_stream, EXPLAINER_CONSUMER
    return [
        f"{JS_API}.CONSUMER.INFO.{stream}.{consumer}",
        # created (or updated) by name, its filter pinned: it can read requests only
        f"{JS_API}.CONSUMER.CREATE.{stream}.{consumer}.{subjects.explain_requested}",
        f"{JS_API}.CONSUMER.MSG.NEXT.{stream}.{consumer}",
        f"$JS.ACK.{stream}.{consumer}.>",
        f"{subjects.explain}.patch.*",
        *(subjects.api_op(op) for op in ("get", "attachments.put", "attachments.get")),
    ]


def _worker_publish(subjects: Subjects) -> list[str]:
    own = [
        subjects.events_stream,
        subjects.explain_stream,
        subjects.dlq_stream,
        subjects.checkpoints_stream,
    ]
    durables = [
        (subjects.events_stream, EVENTS_CONSUMER),
        (subjects.explain_stream, PATCHES_CONSUMER),
    ]
    store = StoreNames.of(subjects)
    runs, meta = f"KV_{store.runs_bucket}", f"KV_{store.blob_meta_bucket}"
    blobs = f"OBJ_{store.blobs_bucket}"
    store_streams = [runs, meta, store.history_stream, blobs, store.log_stream]
    publish: list[str] = []
    for stream in own:  # declared at start-up; one left with other settings is updated
        publish += [f"{JS_API}.STREAM.{op}.{stream}" for op in ("CREATE", "UPDATE")]
    for stream in store_streams:  # the same, its settings read first (worker/store/jetstream.py)
        publish += [f"{JS_API}.STREAM.{op}.{stream}" for op in ("CREATE", "UPDATE", "INFO")]
    for stream, consumer in durables:
        publish += [
            f"{JS_API}.CONSUMER.DURABLE.CREATE.{stream}.{consumer}",
            f"{JS_API}.CONSUMER.MSG.NEXT.{stream}.{consumer}",
            f"$JS.ACK.{stream}.{consumer}.>",
        ]
    publish += [
        # the metrics sampler (with RMOS_METRICS_PORT): pending events
        f"{JS_API}.CONSUMER.INFO.{subjects.events_stream}.{EVENTS_CONSUMER}",
        f"{JS_API}.STREAM.MSG.GET.{subjects.events_stream}",  # the max-deliveries backstop
        f"{subjects.dlq}.*",
        subjects.explain_requested,
        f"{subjects.explain}.status.*",
        subjects.checkpoints,  # signed tree heads of the Merkle log, and reading the latest
        f"{JS_API}.STREAM.MSG.GET.{subjects.checkpoints_stream}",
        INBOX,  # API replies
        # the jetstream store: writes, and reads answered by each stream's leader
        f"$KV.{store.runs_bucket}.*",
        f"$KV.{store.blob_meta_bucket}.*",
        f"{store.history_subject}.*",
        f"{store.log_subject}.*",  # leaves of the Merkle log
        f"$O.{store.blobs_bucket}.C.*",
        f"$O.{store.blobs_bucket}.M.*",
        *(f"{JS_API}.STREAM.MSG.GET.{stream}" for stream in store_streams),
        f"{JS_API}.STREAM.PURGE.{blobs}",  # bytes put again over a partial earlier put
        # the list projection's and the log copy's ephemeral pull consumers
        *_reading(runs, f"$KV.{store.runs_bucket}.>"),
        *_reading(store.log_stream, f"{store.log_subject}.*"),
        # reading a blob: nats-py's ordered push consumer on the object store
        f"{JS_API}.STREAM.NAMES",
        f"{JS_API}.CONSUMER.CREATE.{blobs}",
        f"$JS.FC.{blobs}.>",  # its flow control replies
    ]
    return publish


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``permissions`` subcommand (``commands``: the CLI's subparsers)."""
    roles = "; ".join(f"{role}: {text}" for role, text in ROLE_HELP.items())
    command = commands.add_parser(
        "permissions",
        help="print the least NATS permissions of a role",
        description="Print the least NATS permissions a role needs under the configured "
        "prefixes (RMOS_SUBJECT_PREFIX, RMOS_STREAM_PREFIX): a nats-server `permissions` "
        "entry for a user of an `authorization { users: [...] }` block, or JSON with --json.",
    )
    command.add_argument("role", choices=ROLES, metavar="ROLE", help=f"one of {roles}")
    command.add_argument(
        "--source", help="engine only: allow events.SOURCE only, not every events.*"
    )
    command.add_argument(
        "--json",
        action="store_true",
        help='JSON: {"publish": {"allow": [...]}, "subscribe": {"allow": [...]}}',
    )
    command.set_defaults(nats_url=None, data_dir=None, verbose=False)


def run(args: argparse.Namespace, subjects: Subjects, out: TextIO | None = None) -> int:
    """Print the role's permissions (on stdout); 2 and one line on stderr for a bad
    ``--source``."""
    out = out or sys.stdout
    try:
        permissions = role_permissions(args.role, subjects, args.source)
    except ValueError as exc:
        sys.stderr.write(f"rmos-runs permissions: {exc}\n")
        return 2
    if args.json:
        out.write(json.dumps(permissions.as_json(), indent=2) + "\n")
        return 0
    narrowed = f", source {args.source}" if args.source else ""
    out.write(
        f"# rmos-runs permissions {args.role}{narrowed}: subject prefix {subjects.prefix}, "
        f"stream prefix {subjects.stream_prefix}\n"
    )
    out.write(permissions.server_config() + "\n")
    return 0


def allowed(patterns: tuple[str, ...] | list[str], subject: str) -> bool:
    """Whether a NATS permission list lets ``subject`` through (``*``: one token, ``>``: the
    rest), as nats-server matches a publish or a subscription to a literal subject."""
    tokens = subject.split(".")
    for pattern in patterns:
        parts = pattern.split(".")
        for n, part in enumerate(parts):
            if part == ">":
                if len(tokens) > n:
                    return True
                break
            if n >= len(tokens) or part not in ("*", tokens[n]):
                break
        else:
            if len(parts) == len(tokens):
                return True
    return False
