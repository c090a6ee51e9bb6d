"""``rmos-runs``: parses arguments, builds settings, runs one command; nothing else."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import ValidationError

from contracts.api import ListFilters
from contracts.codes import DeadLetterCode
from worker import __version__, logs, permissions
from worker.output import Exit
from worker.settings import Settings

Subparsers = argparse._SubParsersAction  # the type add_subparsers() returns
FILTER_HELP = {
    "status": "the run's status",
    "event_type": "the event type, exactly",
    "mode": "the mode, exactly",
    "tool_id": "the tool id, exactly",
    "tool_id_prefix": "tool ids that start with this",
    "source": "the engine that published the event",
    "risk_level": "the decision's risk level",
    "explanation_status": "where the explanation stands",
    "workflow_session_id": "runs of this workflow session",
    "material_id": "runs on this material",
    "machine_id": "runs for this machine",
    "parent_run_id": "runs derived from this run",
    "created_from": "created at or after this time (RFC 3339, e.g. 2026-12-01T00:00:00Z)",
    "created_to": "created before this time (RFC 3339)",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rmos-runs",
        description="RMOS run artifacts: the ingestion worker and its tools.",
        epilog="exit codes: 0 ok, 1 failed (verify: not valid), 2 usage or settings, "
        "3 API error, 4 NATS unreachable",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    worker = commands.add_parser("worker", help="run the ingestion worker")
    _common(worker)
    worker.add_argument(
        "--demo", action="store_true", help="publish the demo events once the worker is ready"
    )
    worker.add_argument(
        "--explainer", action="store_true", help="run the reference explainer in this process"
    )
    worker.add_argument(
        "--processes", type=int, help="worker processes on this data dir (env RMOS_PROCESSES)"
    )
    worker.add_argument(
        "--store", choices=["files", "jetstream"], help="where runs live (env RMOS_STORE)"
    )

    explainer = commands.add_parser(
        "explainer", help="run an explainer service: the reference one, or --model's"
    )
    _common(explainer)
    explainer.add_argument(
        "--model",
        dest="explainer_model",
        metavar="PACKAGE.MODULE:ATTR",
        help="the explain function, object or class (env RMOS_EXPLAINER_MODEL; default: "
        "the reference explainer, worker.reference:RuleExplainer)",
    )
    explainer.add_argument(
        "--concurrency",
        dest="explainer_concurrency",
        type=int,
        help="explanations at once (env RMOS_EXPLAINER_CONCURRENCY, default 4)",
    )

    reindex = commands.add_parser("reindex", help="rebuild the list index from the artifacts")
    reindex.add_argument("--data-dir", type=Path, help="data directory (env RMOS_DATA_DIR)")
    reindex.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    reindex.set_defaults(nats_url=None)

    migrate = commands.add_parser(
        "migrate",
        help="copy a files data dir into the jetstream store (idempotent, resumable)",
        description="Copy the runs, their history and the blobs of a files data dir into the "
        "jetstream store on --nats-url, verifying every copied run; run it again to resume.",
    )
    _common(migrate)

    demo = commands.add_parser("publish-demo", help="publish a few realistic run events")
    _common(demo)
    demo.add_argument("--tag", default="demo", help="event id prefix (new tag, new runs)")
    _operator_commands(commands)
    permissions.add_command(commands)
    _audit(commands)
    return parser


def _operator_commands(commands: Subparsers[argparse.ArgumentParser]) -> None:
    """The client commands of ``worker.commands`` (``args.action`` names the one to run)."""
    _client(commands, "get", "show one run artifact").add_argument("run_id")
    runs = _client(commands, "list", "list run summaries, newest first")
    for name, field in ListFilters.model_fields.items():
        choices = _choices(field.annotation)
        runs.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            metavar=name.upper(),
            choices=choices,
            help=FILTER_HELP[name] + (f": {', '.join(choices)}" if choices else ""),
        )
    runs.add_argument("--limit", type=int, help="page size, 1-500 (default 50; 200 with --all)")
    runs.add_argument("--cursor", help="continue after a previous page")
    runs.add_argument("--all", action="store_true", help="every matching run, page after page")
    diff = _client(commands, "diff", "what changed between two runs, with its severity")
    diff.add_argument("a", metavar="RUN_A")
    diff.add_argument("b", metavar="RUN_B")
    verify = _client(commands, "verify", "recompute a run's hashes (exit 1: invalid)")
    verify.add_argument("run_id")
    verify.add_argument(
        "--public-key", type=Path, help="also check the log proof here, against this key (PEM)"
    )
    checkpoint = _client(
        commands, "checkpoint", "print the Merkle log's latest signed checkpoint (JSON)"
    )
    checkpoint.add_argument("--public-key", type=Path, help="check its signature (PEM)")
    checkpoint.add_argument(
        "--since",
        type=Path,
        action="append",
        default=[],
        help="a checkpoint saved earlier: check that the log extends it (exit 1 if not)",
    )
    _client(commands, "history", "every revision of a run, oldest first").add_argument("run_id")
    attach = _client(commands, "attach", "store a file as an attachment blob")
    attach.add_argument("file", type=Path)
    attach.add_argument("--kind", required=True, help="attachment kind, e.g. gcode")
    attach.add_argument("--mime", help="mime type (default: guessed from the file name)")
    attach.add_argument("--filename", help="file name to record (default: the file's)")
    dlq = commands.add_parser("dlq", help="read and replay the dead-letter stream")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True)
    letters = _client(dlq_commands, "list", "the newest dead letters", action="dlq list")
    codes = [code.value for code in DeadLetterCode]
    letters.add_argument("--code", choices=codes, metavar="CODE", help=", ".join(codes))
    letters.add_argument("--limit", type=int, default=50, help="how many (default 50)")
    replay = _client(dlq_commands, "replay", "publish dead letters again", action="dlq replay")
    replay.add_argument("seqs", nargs="+", type=int, metavar="SEQ", help="dead-letter sequence")


def _audit(commands: Subparsers[argparse.ArgumentParser]) -> None:
    """The ``audit`` subcommand (``worker.audit``)."""
    command = commands.add_parser(
        "audit",
        help="check every run, revision and history entry against the Merkle log",
        description="Check the whole store against the tamper-evident log: every run present "
        "and logged, every revision and history entry as logged, nothing rewritten or deleted, "
        "and the log consistent with every signed checkpoint. Exit 1 on any finding.",
    )
    command.add_argument("--nats-url", help="NATS URL (env RMOS_NATS_URL)")
    command.add_argument("--data-dir", type=Path, help="the files store's data dir")
    command.add_argument(
        "--store", choices=["files", "jetstream"], help="which store (env RMOS_STORE)"
    )
    command.add_argument(
        "--public-key",
        type=Path,
        help="the checkpoint key's public PEM (default: the signing key's .pub file)",
    )
    command.add_argument(
        "--checkpoint",
        type=Path,
        action="append",
        default=[],
        help="a saved checkpoint (JSON, or JSON lines); may be given again",
    )
    command.add_argument(
        "--offline", action="store_true", help="no NATS: a files data dir and saved checkpoints"
    )
    command.add_argument("--json", action="store_true", help="the summary as one JSON object")
    command.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _client(
    commands: Subparsers[argparse.ArgumentParser], name: str, text: str, action: str = ""
) -> argparse.ArgumentParser:
    command = commands.add_parser(name, help=text, description=text)
    command.add_argument("--nats-url", help="NATS URL (env RMOS_NATS_URL; else a local worker's)")
    command.add_argument("--data-dir", type=Path, help="where a local worker wrote its URL")
    command.add_argument("--json", action="store_true", help="JSON output, one object per line")
    command.add_argument("--timeout", type=float, default=10.0, help="reply timeout, seconds")
    command.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    command.set_defaults(action=action or name)
    return command


def _common(command: argparse.ArgumentParser) -> None:
    command.add_argument("--nats-url", help="NATS URL (env RMOS_NATS_URL); none: embedded server")
    command.add_argument("--data-dir", type=Path, help="data directory (env RMOS_DATA_DIR)")
    command.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def build_settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if args.nats_url:
        overrides["nats_url"] = args.nats_url
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    for name in ("processes", "store", "explainer_model", "explainer_concurrency"):
        if getattr(args, name, None) is not None:
            overrides[name] = getattr(args, name)
    return Settings(**overrides)


def _choices(annotation: Any) -> list[str] | None:
    """The values a filter may take when they are fixed (a Literal, maybe optional)."""
    for arg in (annotation, *get_args(annotation)):
        if get_origin(arg) is Literal:
            return [str(value) for value in get_args(arg)]
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = build_settings(args)
    except ValidationError as exc:  # a bad RMOS_* variable or flag: one line each, no traceback
        for error in exc.errors(include_input=False):
            field = ".".join(str(p) for p in error["loc"])
            sys.stderr.write(f"rmos-runs: invalid setting {field} (RMOS_{field.upper()}): ")
            sys.stderr.write(f"{error['msg']}\n")
        return Exit.USAGE
    logs.configure(settings.log_format, verbose=args.verbose)
    from worker.connection import ConnectError

    try:
        return _command(args, settings)
    except ConnectError as exc:  # NATS not reached within RMOS_CONNECT_TIMEOUT_S: one line
        sys.stderr.write(f"rmos-runs: {exc}\n")
        return Exit.UNREACHABLE


def _command(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "permissions":
        return permissions.run(args, settings.subjects)
    if args.command == "worker":  # before anything imports prometheus_client
        from worker import multiproc

        try:
            multiproc.prepare(settings)
        except multiproc.MetricsDirError as exc:
            sys.stderr.write(f"rmos-runs: cannot start: {exc}\n")
            return Exit.FAILED
    from worker import runner  # imported late: --help stays fast

    if args.command == "worker":
        return asyncio.run(runner.run_worker(settings, demo=args.demo, explainer=args.explainer))
    if args.command == "explainer":
        return asyncio.run(runner.run_explainer(settings))
    if args.command == "reindex":
        return runner.reindex(settings)
    if args.command == "migrate":
        return asyncio.run(runner.migrate(settings))
    if args.command == "audit":
        return asyncio.run(runner.audit(args, settings))
    if args.command == "publish-demo":
        return asyncio.run(runner.publish_demo(settings, tag=args.tag))
    from worker import commands

    return commands.run(args, settings)


if __name__ == "__main__":
    sys.exit(main())
