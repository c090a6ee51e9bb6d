"""The explainer SDK: an explanation service is one function, ``explain(run)``.

An explainer team writes a function (or a method) that takes a run artifact, a ``dict`` as the
worker stored it, and returns its explanation: a ``str`` (the summary, also kept as the full
text) or an :class:`Explanation` (a summary and a longer text). It may be ``async`` or not; a
plain function runs in a thread, so the service stays responsive while it works. Then::

    rmos-runs explainer --model package.module:explain --nats-url nats://host:4222

or, from Python, ``worker.explainer.serve(explain, "nats://host:4222")``, or ``async with
Explainer(explain, url):`` inside a program of one's own. The SDK does the rest, as the contract
wants it (CONTRACT section 4):

- it consumes ``explain.requested`` through the durable pull consumer ``rmos-explainer``
  (created if absent, its filter pinned; every instance shares it, so they split the work);
- it runs up to ``concurrency`` explanations at once, telling the server the message is in
  progress while one takes long, and gives up on one after ``timeout`` s (``ERROR``);
- it stores the full text as a content-addressed attachment (``attachments.put``), named in
  the patch's advisory entry, and patches ``READY`` with the summary; an exception raised by
  ``explain`` becomes ``ERROR`` with its message (``ValueError: no geometry``);
- a failure of its own (NATS unreachable for a moment, an attachment refused) is retried: the
  request comes back, a bounded number of times; the worker ignores repeated and stale patches;
- on SIGTERM or SIGINT (or :meth:`Explainer.stop`) it fetches nothing more, lets the
  explanations under way finish for up to ``graceful_timeout`` s and hands back the rest.

The explainer's ``explainer_id`` and ``version`` (in the patch and its advisory entry) are the
``explainer_id`` / ``version`` attributes of the model when it has them (a function may carry
them too), else the function's module and qualified name and ``1``. The reference explainer
(``worker.reference``) is a user of this module like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import json
import logging
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias, cast

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from contracts.models import ExplanationPatch, PatchAdvisory
from contracts.subjects import EXPLAINER_CONSUMER, Subjects
from worker import tracing
from worker.client import RunsClient
from worker.connection import (
    DEFAULT_CONNECT_TIMEOUT_S,
    ConnectError,
    connection_name,
    first_connect,
    servers,
)
from worker.core.timefmt import utc_now, utc_text
from worker.delivery import FetchFailures
from worker.output import Exit

log = logging.getLogger(__name__)

MAX_SUMMARY = 4000  # CONTRACT section 4: a summary or an error is 1-4000 characters
ACK_WAIT_S = 60.0  # a request not settled by then is delivered again (to any instance)
MAX_DELIVER = 5  # deliveries of one request; a failure of the explainer's own is retried
RETRY_DELAY_S = 2.0  # before a request whose handling failed (not its model) comes back
STREAM_NOT_FOUND = 10059  # JSStreamNotFoundErr
STREAM_POLL_S = 2.0

Result: TypeAlias = "str | Explanation"


@dataclass(frozen=True, slots=True)
class Explanation:
    """What ``explain`` may return instead of a ``str``: the summary shown with the run
    (1-4000 characters; a longer one is cut, the whole kept in the text) and the full text,
    stored as an attachment (the summary when None)."""

    summary: str
    text: str | None = None


class Model(Protocol):
    """An object whose ``explain`` method is the function (sync or async)."""

    def explain(self, run: dict[str, Any]) -> Result | Awaitable[Result]: ...


Explain: TypeAlias = Callable[[dict[str, Any]], "Result | Awaitable[Result]"]


class ModelError(ValueError):
    """``--model`` names nothing that can explain (a usage error)."""


def load(spec: str) -> Explain | Model:
    """``package.module:attr``: a function, an object with an ``explain`` method, or a class
    made with no arguments into such an object."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ModelError(f"--model {spec!r}: expected package.module:attr")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"--model {spec!r}: cannot import {module_name}: {exc}") from None
    found: Any = module
    for part in attr.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise ModelError(f"--model {spec!r}: {module_name} has no {attr}") from None
    if inspect.isclass(found):
        try:
            found = found()
        except Exception as exc:
            raise ModelError(f"--model {spec!r}: {attr}() failed: {exc!r}") from None
    if callable(getattr(found, "explain", None)) or callable(found):
        return cast("Explain | Model", found)
    raise ModelError(f"--model {spec!r}: {attr} is neither callable nor has an explain method")


def _function(model: Explain | Model) -> Explain:
    method = getattr(model, "explain", None)
    return cast(Explain, method) if callable(method) else cast(Explain, model)


def _label(model: Explain | Model, name: str, default: str) -> str:
    value = getattr(model, name, None)
    return value[:128] if isinstance(value, str) and value else default[:128]


def _shortened(text: str) -> str:
    return text if len(text) <= MAX_SUMMARY else text[: MAX_SUMMARY - 1] + "…"


def outcome(result: object) -> tuple[str, str] | str:
    """``explain``'s result as (summary, full text), or why it is no explanation (an ERROR)."""
    if isinstance(result, str):
        summary, text = result, result
    elif isinstance(result, Explanation):
        summary, text = result.summary, result.text if result.text is not None else result.summary
        if not isinstance(summary, str) or not isinstance(text, str):
            return "explain returned an Explanation whose summary or text is not a str"
    else:
        return f"explain returned {type(result).__name__}, not a str or an Explanation"
    if not summary.strip():
        return "explain returned an empty summary"
    return _shortened(summary.strip()), text


def failure(exc: BaseException) -> str:
    """An exception of ``explain`` as the ERROR patch's text."""
    text = str(exc)
    return _shortened(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


class Explainer:
    """One explainer process's service (see the module's documentation). ``nats`` is a NATS
    URL (no credentials but the URL's), or what ``worker.connection.connect_options(settings,
    "explainer")`` gives (the settings' user, token, nkey, creds and TLS)."""

    def __init__(
        self,
        model: Explain | Model,
        nats: str | Mapping[str, Any],
        subjects: Subjects | None = None,
        *,
        explainer_id: str | None = None,
        version: str | None = None,
        concurrency: int = 4,
        timeout: float = 120.0,
        graceful_timeout: float = 30.0,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._explain = _function(model)
        qualname = getattr(self._explain, "__qualname__", type(model).__qualname__)
        name = f"{getattr(self._explain, '__module__', None) or 'explainer'}.{qualname}"
        self.explainer_id = explainer_id or _label(model, "explainer_id", name)
        self.version = version or _label(model, "version", "1")
        self.subjects = subjects or Subjects()
        self.concurrency = concurrency
        self.timeout = timeout
        self.graceful_timeout = graceful_timeout
        self.connect_timeout = connect_timeout
        if isinstance(nats, str):
            nats = {"servers": servers(nats), "name": connection_name("explainer")}
        self._options = dict(nats)
        self._nc: Client | None = None
        self._stopping = asyncio.Event()
        self._pulling: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Explainer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Connect (``ConnectError`` when NATS is not reached within ``connect_timeout``),
        wait for the worker's stream, make sure of the consumer, and start pulling."""
        options = dict(self._options)
        self._nc = await first_connect(
            options.pop("servers"), timeout=self.connect_timeout, **options
        )
        if await self._stream_declared():
            await self._declare_consumer()
            self._pulling = asyncio.create_task(self._pull(), name="rmos-explainer-pull")

    async def stop(self) -> None:
        """Fetch nothing more; let what is under way finish (``graceful_timeout``), hand back
        the rest, close the connection."""
        self._stopping.set()
        if self._pulling is not None:
            try:
                await self._pulling
            except Exception as exc:  # never a silent stop: a loop that failed is said
                log.error("the explainer's pull loop failed: %r", exc)
            self._pulling = None
        if self._nc is not None:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await self._nc.drain()
            self._nc = None

    async def run(self) -> int:
        """Serve until SIGTERM or SIGINT; exit 4 (one line says why) when NATS cannot be
        reached within the connect timeout. Started before any worker, it waits for the
        worker's stream (saying so once) instead of failing."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        try:
            await self.start()
            stopping = asyncio.create_task(self._stopping.wait())
            await asyncio.wait(
                {stopping, *([self._pulling] if self._pulling else [])},
                return_when=asyncio.FIRST_COMPLETED,
            )
            stopping.cancel()
            failed = not self._stopping.is_set()  # the pull loop ended by itself (stop says why)
        except ConnectError as exc:
            log.error("cannot start: %s", exc)
            return Exit.UNREACHABLE
        except Exception as exc:  # e.g. its consumer refused (the role's permissions)
            log.error("cannot start: %s", exc)
            return Exit.FAILED
        finally:
            await self.stop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        return Exit.FAILED if failed else Exit.OK

    @property
    def _connection(self) -> Client:
        assert self._nc is not None, "start() first"
        return self._nc

    async def _stream_declared(self) -> bool:
        """Wait until the worker has declared the explain stream; False if stopped first. Asks
        for this explainer's consumer, which its role may read (CONTRACT section 8): "stream
        not found" means the worker has not run yet."""
        js, stream = self._connection.jetstream(), self.subjects.explain_stream
        waiting = False
        while not self._stopping.is_set():
            try:
                await js.consumer_info(stream, EXPLAINER_CONSUMER)
                break
            except nats.js.errors.NotFoundError as exc:
                if exc.err_code != STREAM_NOT_FOUND:
                    break  # the stream is there, the consumer not yet: made next
            except (nats.errors.Error, TimeoutError) as exc:  # reconnecting: try again
                log.debug("explain stream not checked yet: %r", exc)
            if not waiting:
                log.info("waiting for stream %s: `rmos-runs worker` declares it", stream)
                waiting = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), STREAM_POLL_S)
        if waiting and not self._stopping.is_set():
            log.info("stream %s found; explaining", stream)
        return not self._stopping.is_set()

    async def _declare_consumer(self) -> None:
        """Create the shared durable consumer, or update it to this config (by name, the
        filter pinned: what the explainer role may do)."""
        config = ConsumerConfig(
            name=EXPLAINER_CONSUMER,
            durable_name=EXPLAINER_CONSUMER,
            filter_subject=self.subjects.explain_requested,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ACK_WAIT_S,
            max_deliver=MAX_DELIVER,
        )
        await self._connection.jetstream().add_consumer(self.subjects.explain_stream, config)

    async def _pull(self) -> None:
        js = self._connection.jetstream()
        sub = await js.pull_subscribe_bind(EXPLAINER_CONSUMER, stream=self.subjects.explain_stream)
        failures = FetchFailures(EXPLAINER_CONSUMER)
        try:
            while not self._stopping.is_set():
                free = self.concurrency - len(self._inflight)
                if free == 0:
                    await asyncio.wait(self._inflight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                for msg in await failures.fetch(sub, free):
                    task = asyncio.create_task(self.handle(msg))
                    self._inflight.add(task)
                    task.add_done_callback(self._inflight.discard)
        finally:
            await self._drain()
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _drain(self) -> None:
        if not self._inflight:
            return
        log.info("stopping: %d explanations under way", len(self._inflight))
        _, late = await asyncio.wait(self._inflight, timeout=self.graceful_timeout)
        for task in late:  # each hands its request back as it is cancelled
            task.cancel()
        if late:
            await asyncio.wait(late)
            log.warning("stopped with %d explanations unfinished, handed back", len(late))

    async def handle(self, msg: Msg) -> None:
        """Explain one request and patch the answer; settle its message. Never raises."""
        try:
            request = json.loads(msg.data)
            run, run_id, request_id = request["run"], request["run_id"], request["request_id"]
            if not (isinstance(run, dict) and isinstance(run_id, str)):
                raise TypeError("run is not an object")
            if not isinstance(request_id, str):
                raise TypeError("request_id is not a string")
        except (ValueError, KeyError, TypeError) as exc:  # not the contract's: never again
            log.error("not an explanation request, dropped: %r", exc)
            with contextlib.suppress(nats.errors.Error):
                await msg.term()
            return
        attributes = {"rmos.run_id": run_id, "rmos.request_id": request_id}
        with tracing.continued(msg.headers, "rmos.explain", attributes=attributes):
            try:
                await self._answer(msg, run, request_id)
                await msg.ack()
            except asyncio.CancelledError:  # stopping: for another instance, at once
                with contextlib.suppress(nats.errors.Error):
                    await msg.nak()
                raise
            except Exception as exc:  # ours, not the model's: the request comes back
                log.warning("request %s not answered, retrying: %r", request_id, exc)
                with contextlib.suppress(nats.errors.Error):
                    await msg.nak(delay=RETRY_DELAY_S)

    async def _answer(self, msg: Msg, run: dict[str, Any], request_id: str) -> None:
        result = await self._explained(msg, run)
        if isinstance(result, str):
            log.info("no explanation for %s: %s", run["run_id"], result)
            await self._patch(run["run_id"], request_id, status="ERROR", error=result)
            return
        summary, text = result
        client = RunsClient(self._connection, self.subjects)
        stored = await client.put_attachment(
            text.encode(),
            kind="explanation",
            mime="text/plain",
            filename=f"{run['run_id']}-explanation.txt",
        )
        advisory = PatchAdvisory(
            advisory_id=f"expl-{request_id}",
            kind="explanation",
            created_at_utc=utc_text(utc_now()),
            request_id=request_id,
            engine_id=self.explainer_id,
            engine_version=self.version,
            sha256=stored.sha256,
        )
        await self._patch(
            run["run_id"], request_id, status="READY", summary=summary, advisory=advisory
        )

    async def _explained(self, msg: Msg, run: dict[str, Any]) -> tuple[str, str] | str:
        """The model's explanation, or why there is none; the message kept in progress."""
        beating = asyncio.create_task(_in_progress(msg))
        try:
            return outcome(await asyncio.wait_for(self._call(run), self.timeout))
        except TimeoutError:
            return f"explain did not answer within {self.timeout:g} s"
        except Exception as exc:
            log.warning("explain failed for %s: %r", run.get("run_id"), exc, exc_info=exc)
            return failure(exc)
        finally:
            beating.cancel()

    async def _call(self, run: dict[str, Any]) -> object:
        if inspect.iscoroutinefunction(self._explain):
            result: object = await self._explain(run)
        else:
            result = await asyncio.to_thread(self._explain, run)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _patch(self, run_id: str, request_id: str, **fields: Any) -> None:
        patch = ExplanationPatch.model_validate(
            {
                "schema": "rmos.explanation_patch.v1",
                "run_id": run_id,
                "request_id": request_id,
                "explainer_id": self.explainer_id,
                **fields,
            }
        )
        body = patch.model_dump_json(by_alias=True, exclude_none=True).encode()
        client = RunsClient(self._connection, self.subjects)
        await client.publish_raw(
            self.subjects.explain_patch(run_id), body, msg_id=f"patch:{request_id}"
        )
        log.info("patched %s %s", run_id, fields["status"])


async def _in_progress(msg: Msg) -> None:
    """Tell the server, every third of the ack wait, that the request is being worked on."""
    while True:
        await asyncio.sleep(ACK_WAIT_S / 3)
        with contextlib.suppress(nats.errors.Error):
            await msg.in_progress()


def serve(model: Explain | Model, nats: str | Mapping[str, Any], **options: Any) -> int:
    """Run an explainer until SIGTERM or SIGINT (the ``Explainer``'s options); the exit code."""

    async def main() -> int:
        return await Explainer(model, nats, **options).run()

    return asyncio.run(main())
