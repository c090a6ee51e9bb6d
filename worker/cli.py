"""``rmos-runs``: parses arguments, builds settings, runs one command; nothing else."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from worker.settings import Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rmos-runs", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    worker = commands.add_parser("worker", help="run the ingestion worker")
    _common(worker)
    worker.add_argument(
        "--demo", action="store_true", help="publish the demo events once the worker is ready"
    )

    reindex = commands.add_parser("reindex", help="rebuild the list index from the artifacts")
    reindex.add_argument("--data-dir", type=Path, help="data directory (env RMOS_DATA_DIR)")
    reindex.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    reindex.set_defaults(nats_url=None)

    demo = commands.add_parser("publish-demo", help="publish a few realistic run events")
    _common(demo)
    demo.add_argument("--tag", default="demo", help="event id prefix (new tag, new runs)")
    return parser


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
    return Settings(**overrides)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = build_settings(args)
    from worker import runner  # imported late: --help stays fast

    if args.command == "worker":
        return asyncio.run(runner.run_worker(settings, demo=args.demo))
    if args.command == "reindex":
        return runner.reindex(settings)
    return asyncio.run(runner.publish_demo(settings, tag=args.tag))


if __name__ == "__main__":
    sys.exit(main())
