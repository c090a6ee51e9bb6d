"""Process-level entry points: the embedded nats-server, the worker, the demo publisher."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path

from worker import explainer as sdk
from worker import multiproc
from worker.app import Worker
from worker.client import RunsApiError, RunsClient
from worker.connection import ConnectError, connect_options
from worker.demo import demo_events
from worker.errors import TransientError
from worker.nats_server import NatsServer
from worker.output import Exit, Progress, UsageError, note
from worker.processes import Siblings
from worker.settings import Settings
from worker.store.files import FileStore

log = logging.getLogger(__name__)
EMBEDDED_PORT = 4222


def url_file(data_dir: Path) -> Path:
    """Where a worker with an embedded server writes its URL, for local tools to find."""
    return data_dir / "nats" / "url"


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@contextlib.asynccontextmanager
async def nats_endpoint(settings: Settings) -> AsyncIterator[str]:
    """The configured NATS URL, or an embedded server (loopback, store under the data dir)."""
    if settings.nats_url:
        yield settings.nats_url
        return
    store = settings.data_dir / "nats"
    server = NatsServer(store, port=EMBEDDED_PORT if _port_free(EMBEDDED_PORT) else None)
    async with server:
        url_file(settings.data_dir).write_text(server.url + "\n")
        log.info("embedded nats-server listening on %s (store %s)", server.url, store)
        try:
            yield server.url
        finally:
            url_file(settings.data_dir).unlink(missing_ok=True)


def resolve_url(settings: Settings) -> str:
    """For clients: the configured URL, else the one a local embedded worker wrote."""
    if settings.nats_url:
        return settings.nats_url
    path = url_file(settings.data_dir)
    if path.exists():
        return path.read_text().strip()
    raise SystemExit(f"no NATS URL: pass --nats-url, set RMOS_NATS_URL, or start a worker ({path})")


async def run_worker(settings: Settings, *, demo: bool = False, explainer: bool = False) -> int:
    """The worker (and its sibling processes); with ``explainer``, the explainer the settings
    name (the reference one by default) in the same process."""
    async with nats_endpoint(settings) as url:
        worker = Worker(settings, url)
        siblings = Siblings(settings, url, settings.processes - 1)
        worker.health.siblings = siblings.pids
        worker.on_stopping.append(siblings.terminate)
        await siblings.start(on_exit=worker.stop)
        started: list[sdk.Explainer] = []
        helpers: list[asyncio.Task[None]] = []
        if demo or explainer:  # only then: the worker role needs no api.get
            helpers.append(
                asyncio.create_task(_when_ready(settings, url, started, demo, explainer))
            )
        _tune_collector()
        code = await worker.run()
        for helper in helpers:
            helper.cancel()
        for outcome in await asyncio.gather(*helpers, return_exceptions=True):
            if isinstance(outcome, ConnectError):
                if code == 0:  # else the worker could not connect either, and said so
                    log.error("demo or explainer not started: %s", outcome)
            elif isinstance(outcome, Exception):
                log.error("demo or explainer start failed: %r", outcome)
        for explaining in started:
            await explaining.stop()
        code = max(code, await siblings.wait())
        multiproc.finish()  # the group's metrics directory, once every sibling is gone
        return code


def _tune_collector() -> None:
    """The worker process allocates containers by the thousand an event and frees nearly all
    of them by reference counting, so CPython's collector mostly finds nothing: at its defaults
    it took ~7 % of the CPU of a flood (a full pass every few thousand events walked everything
    the imports made). What start-up made is frozen out of its passes, and a young pass waits
    for 20,000 new containers instead of 700 (bench/ingest_bench.py, 20 k events: the
    collector's time per worker ~0.35 -> 0.05 s)."""
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)


async def run_explainer(settings: Settings) -> int:
    """The explainer service the settings name; 2 when ``--model`` names nothing that can
    explain, 4 (and one line) when NATS cannot be reached in time."""
    try:
        return await explainer_for(settings, resolve_url(settings)).run()
    except sdk.ModelError as exc:
        note(f"rmos-runs explainer: {exc}")
        return Exit.USAGE


def explainer_for(settings: Settings, url: str) -> sdk.Explainer:
    """The explainer of ``RMOS_EXPLAINER_MODEL`` with the settings' connection and limits."""
    return sdk.Explainer(
        sdk.load(settings.explainer_model),
        connect_options(settings, "explainer", url),
        settings.subjects,
        concurrency=settings.explainer_concurrency,
        timeout=settings.explainer_timeout_s,
        graceful_timeout=settings.graceful_timeout_s,
        connect_timeout=settings.connect_timeout_s,
    )


def reindex(settings: Settings) -> int:
    """Rebuild the list index from every artifact, with a progress line on stderr."""
    store = FileStore(settings.data_dir)
    asyncio.run(store.open(rebuild_lost_index=False))  # rebuilt below, with progress
    progress = Progress(store.count_runs())
    try:
        done = store.reindex(progress)
    finally:
        store.close()
    progress(done)
    log.info("indexed %d runs in %.1f s", done, progress.close())
    return 0


async def migrate(settings: Settings) -> int:
    """Copy the files data dir into the jetstream store on the configured NATS."""
    from worker import migrate

    return await migrate.run(settings, resolve_url(settings))


async def audit(args: argparse.Namespace, settings: Settings) -> int:
    """The whole store against the Merkle log (``worker.audit``); usage errors exit 2."""
    from worker import audit

    try:
        url = None if args.offline else resolve_url(settings)
        return await audit.run(args, settings, url)
    except UsageError as exc:
        note(f"rmos-runs audit: {exc}")
        return Exit.USAGE
    except TransientError as exc:  # the store failed while it was read: nothing is concluded
        note(f"rmos-runs audit: the store could not be read, nothing was concluded: {exc}")
        return Exit.API_ERROR


async def _when_ready(
    settings: Settings, url: str, started: list[sdk.Explainer], demo: bool, explainer: bool
) -> None:
    """Once the worker answers ``api.get``: start the explainer, publish the demo events."""
    async with await RunsClient.from_settings(settings, "worker-helper", url=url) as client:
        for _ in range(300):  # bounded: ~30 s
            try:
                await client.get("run_" + "0" * 32)
            except RunsApiError:
                break
            except Exception:
                await asyncio.sleep(0.1)
        if explainer:
            started.append(explainer_for(settings, url))
            await started[-1].start()
            log.info("explainer %s running", settings.explainer_model)
        if demo:
            await _publish_demo(client)


async def publish_demo(settings: Settings, *, tag: str = "demo") -> int:
    """Publish the demo events; ConnectError (one line and exit 1 in the CLI) when NATS
    cannot be reached within ``RMOS_CONNECT_TIMEOUT_S``."""
    connecting = RunsClient.from_settings(settings, "publish-demo", url=resolve_url(settings))
    async with await connecting as client:
        await _publish_demo(client, tag)
    return 0


async def _publish_demo(client: RunsClient, tag: str = "demo") -> None:
    for event in demo_events(tag):
        ack = await client.publish_event(event)
        log.info("published %s:%s (stream seq %s)", event["source"], event["event_id"], ack.seq)
