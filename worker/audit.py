"""``rmos-runs audit``: the whole store held against the Merkle log and its checkpoints.

Online (the default) it reads every checkpoint the deployment published (the checkpoints
stream: the witnesses' history of tree heads) and, for the jetstream store, copies the log
stream into a fresh local copy first. ``--offline`` needs no NATS at all: a files data dir (or a
copy of one), checkpoints saved earlier (``--checkpoint FILE``, e.g. the output of ``rmos-runs
log-checkpoint --json``) and the public key. Findings are printed one a line; exit 1 on any.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, suppress
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import ValidationError

from contracts.canonical import parse_json
from contracts.transparency import Checkpoint
from worker.connection import connect_options, connector, first_connect
from worker.core.log_checks import Audit, LeafPass
from worker.errors import StoreOutageError
from worker.output import Exit, Progress, UsageError, emit, json_line
from worker.settings import Settings
from worker.signing import SigningKeyError, load_public, public_path
from worker.store.base import RunStore, StoredRun
from worker.store.files import FileStore
from worker.store.jetstream import JetStreamStore
from worker.store.merkle_log import MerkleLog
from worker.streams import scan_fetch

FETCH = 1000
AUDIT_BATCH = 512  # stored runs held against their leaves a query at a time
FORK_AT = 1  # leaves from which the leaf pass has a process of its own (a fork costs ~15 ms)


def saved_checkpoints(paths: list[Path]) -> list[Checkpoint]:
    """Checkpoints from files: one JSON object (a checkpoint, or a ``log.checkpoint`` reply)
    or JSON lines of them."""
    found = []
    for path in paths:
        try:
            text = path.read_text()
        except OSError as exc:
            raise UsageError(f"checkpoint {path}: {exc.strerror or exc}") from None
        for number, line in enumerate(_documents(text), 1):
            try:
                document = parse_json(line)
                document = document.get("checkpoint", document)
                found.append(Checkpoint.model_validate(document))
            except (ValueError, AttributeError, ValidationError) as exc:
                reason = str(exc).splitlines()[0]
                raise UsageError(
                    f"checkpoint {path}:{number}: not a checkpoint: {reason}"
                ) from None
    return found


def _documents(text: str) -> Iterator[str]:
    stripped = text.strip()
    if not stripped:
        return
    try:
        json.loads(stripped)
        yield stripped
    except ValueError:
        yield from (line for line in stripped.splitlines() if line.strip())


async def published_checkpoints(js: JetStreamContext, settings: Settings) -> list[Checkpoint]:
    """Every checkpoint in the deployment's checkpoints stream, oldest first; a stream that
    cannot be read is ``StoreOutageError``."""
    stream = settings.subjects.checkpoints_stream
    config = ConsumerConfig(
        ack_policy=AckPolicy.NONE,
        deliver_policy=DeliverPolicy.ALL,
        inactive_threshold=30.0,
        mem_storage=True,
        num_replicas=1,
    )
    try:
        last = (await js.stream_info(stream)).state.last_seq
        if last == 0:
            return []
        sub = await js.pull_subscribe(settings.subjects.checkpoints, stream=stream, config=config)
    except (nats.errors.Error, TimeoutError) as exc:
        raise StoreOutageError(f"cannot read {stream}: {exc!r}") from exc
    found: list[Checkpoint] = []
    try:
        seq = delivered = 0
        while seq < last:
            for msg in await scan_fetch(sub, FETCH, 5.0, stream):
                delivered += 1
                if msg.metadata.sequence.consumer != delivered:
                    raise StoreOutageError(f"the scan of {stream} lost messages")
                seq = msg.metadata.sequence.stream
                try:
                    found.append(Checkpoint.model_validate(parse_json(msg.data)))
                except (ValueError, ValidationError):
                    continue  # not a checkpoint: the audit counts what it could read
    finally:
        with suppress(nats.errors.Error, TimeoutError):
            await sub.unsubscribe()
    return found


def public_key_path(args: argparse.Namespace, settings: Settings) -> Path:
    """``--public-key``; online, the signing key's ``.pub`` by default (checkpoints signed by
    another key are findings then), never offline: a copy's own key proves nothing."""
    if args.public_key is not None:
        return Path(args.public_key)
    if args.offline:
        raise UsageError("--offline needs --public-key (the key the checkpoints are signed with)")
    own = public_path(settings.signing_key_path)
    if own.exists():
        return own
    raise UsageError(f"no public key: pass --public-key (none at {own})")


async def audit(args: argparse.Namespace, settings: Settings, url: str | None) -> tuple[Audit, int]:
    """Run the audit; (its result, the checkpoints checked)."""
    try:
        public = load_public(public_key_path(args, settings))
    except SigningKeyError as exc:
        raise UsageError(str(exc)) from None
    checkpoints = saved_checkpoints(args.checkpoint)
    async with AsyncExitStack() as stack:
        if args.offline:
            if settings.store != "files":
                raise UsageError("--offline audits a files data dir (--store files)")
            if not checkpoints:
                raise UsageError("--offline needs --checkpoint FILE (a saved checkpoint)")
            store: RunStore = await _files(settings.data_dir, stack)
        else:
            assert url is not None
            nc = await first_connect(
                **connect_options(settings, "audit", url), timeout=settings.connect_timeout_s
            )
            stack.push_async_callback(_close, nc)
            js = nc.jetstream()
            checkpoints += await published_checkpoints(js, settings)
            if settings.store == "jetstream":
                store = await _jetstream(settings, url, js, args.data_dir, stack)
            else:
                store = await _files(settings.data_dir, stack)
        return await _run(store, public, checkpoints), len(checkpoints)
    raise AssertionError("unreachable")  # pragma: no cover (mypy: the with block returns)


async def _files(data_dir: Path, stack: AsyncExitStack) -> FileStore:
    if (data_dir / "runs").is_dir():
        raise UsageError(
            f"{data_dir} holds runs/, the layout of an older version: start this version's "
            "worker on it once (it moves the runs into segments/), then audit it"
        )
    if not (data_dir / "log.sqlite").is_file():
        raise UsageError(f"{data_dir} is not a files store's data dir (no log.sqlite)")
    store = FileStore(data_dir)
    await asyncio.to_thread(store.log.open)
    stack.callback(store.log.close)
    return store


async def _jetstream(
    settings: Settings,
    url: str,
    js: JetStreamContext,
    data_dir: Path | None,
    stack: AsyncExitStack,
) -> JetStreamStore:
    """The jetstream store, its log copied afresh into ``data_dir`` (default: a temp dir)."""
    if data_dir is None:
        data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rmos-audit-")))
    store = JetStreamStore(
        lambda: js,
        connector(connect_options(settings, "audit-copy", url)),
        settings.subjects,
        data_dir,
        timeout=settings.publish_timeout_s,
    )
    await asyncio.to_thread(store.log.open)
    stack.callback(store.log.close)
    return store


async def _run(
    store: RunStore, public: Any, checkpoints: list[Checkpoint], *, fork_at: int = FORK_AT
) -> Audit:
    """The leaf pass and the stored runs' pass. From ``fork_at`` leaves on, where the platform
    forks, the leaves are checked in a second process while this one checks the runs (both
    cores: either pass alone holds the GIL); else one after the other."""
    result = Audit(public)
    wanted = frozenset(c.tree_size for c in checkpoints)
    size = await store.catch_up_log()
    if size >= fork_at and "fork" in multiprocessing.get_all_start_methods():
        with _Forked(store.log, wanted) as forked:
            await _runs_pass(result, store.log, store.stored_runs(), size)
            leaves = await forked.result()
    else:
        leaves = LeafPass(wanted)
        progress = Progress(size, "leaves")
        for index, data in store.log.scan():
            leaves.leaf(index, data)
            if index % 4096 == 0:
                progress(index)
        progress.close()
        await _runs_pass(result, store.log, store.stored_runs(), leaves.count)
    result.conclude(leaves, checkpoints, await asyncio.to_thread(store.log.root, leaves.count))
    return result


class _Forked:
    """The leaf pass in a child forked at once, while the log's connections are closed (no
    SQLite connection may cross a fork); its result comes back through a pipe."""

    def __init__(self, merkle_log: MerkleLog, wanted: frozenset[int]) -> None:
        context = multiprocessing.get_context("fork")
        self._receive, send = context.Pipe(duplex=False)
        self._child = context.Process(
            target=_send_leaf_pass, args=(send, merkle_log.path, wanted), daemon=True
        )
        merkle_log.close()
        try:
            self._child.start()
        finally:
            merkle_log.open()
            send.close()

    async def result(self) -> LeafPass:
        try:
            value = await asyncio.to_thread(self._receive.recv)
        except EOFError:
            await asyncio.to_thread(self._child.join)
            code = self._child.exitcode
            raise RuntimeError(f"the leaf pass ended with exit code {code}") from None
        if isinstance(value, BaseException):
            raise value
        assert isinstance(value, LeafPass)
        return value

    def __enter__(self) -> _Forked:
        return self

    def __exit__(self, *_: object) -> None:
        self._child.terminate()  # a no-op once it has sent its result and gone
        self._child.join()
        self._receive.close()


def _send_leaf_pass(send: Connection, path: Path, wanted: frozenset[int]) -> None:
    try:
        send.send(_leaf_pass(path, wanted))
    except BaseException as exc:  # the parent raises it
        send.send(exc)
    finally:
        send.close()


def _leaf_pass(path: Path, wanted: frozenset[int]) -> LeafPass:
    """Every leaf of the log at ``path``, read on a connection of its own."""
    merkle_log = MerkleLog(path)
    merkle_log.open_read_only()
    try:
        leaves = LeafPass(wanted)
        for index, data in merkle_log.scan():
            leaves.leaf(index, data)
        return leaves
    finally:
        merkle_log.close()


async def _runs_pass(
    result: Audit, merkle_log: MerkleLog, stored: AsyncIterator[StoredRun], bound: int
) -> None:
    """Every stored run held against its leaves, looked up ``AUDIT_BATCH`` runs a query.
    ``bound``: the log's size (at most one run a leaf: a bound for the progress, not a count)."""
    progress = Progress(bound, "runs")
    batch: list[StoredRun] = []
    async for run in stored:
        batch.append(run)
        if len(batch) == AUDIT_BATCH:
            _audit_runs(result, merkle_log, batch)
            progress(result.runs)
    _audit_runs(result, merkle_log, batch)
    progress.close()


def _audit_runs(result: Audit, merkle_log: MerkleLog, batch: list[StoredRun]) -> None:
    logged = merkle_log.logged_of([run.run_id for run in batch])
    for run in batch:
        result.run(run.run_id, run.artifact, run.history, logged[run.run_id])
    batch.clear()


async def _close(nc: Client) -> None:
    with suppress(nats.errors.Error, TimeoutError):
        await nc.close()


async def run(args: argparse.Namespace, settings: Settings, url: str | None) -> int:
    """The command: audit, print the summary and each finding; exit 1 on any finding."""
    result, checked = await audit(args, settings, url)
    summary = {
        "runs": result.runs,
        "revisions": result.revisions,
        "leaves": result.leaves,
        "root": result.root.hex(),
        "checkpoints": checked,
        "findings": [f.as_dict() for f in result.findings],
    }
    if args.json:
        emit(sys.stdout, json_line(summary))
    else:
        for finding in result.findings:
            where = f" {finding.run_id}" if finding.run_id else ""
            emit(sys.stdout, f"{finding.kind}{where}: {finding.detail}")
        verdict = f"{len(result.findings)} findings" if result.findings else "no findings"
        emit(
            sys.stdout,
            f"audit: {result.runs} runs, {result.revisions} revisions, {result.leaves} leaves, "
            f"{checked} checkpoints: {verdict}",
        )
    return Exit.FAILED if result.findings else Exit.OK
