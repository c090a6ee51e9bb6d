"""How a program reaches NATS: the server list of a URL setting, and connections to it.

Every program connects through :func:`first_connect`. nats-py, told to reconnect for ever
(``max_reconnect_attempts=-1``), also retries its *first* connection for ever: a refused port, a
server that never answers, a wrong password and an untrusted certificate all hang the program
without a word. Here the first connection is bounded: it gives up after ``timeout`` seconds, or
sooner on an error that retrying cannot fix (an authorization violation, a certificate that does
not verify) once every server has answered with one, and says why in one line, without the
password. Once connected, the connection reconnects for ever, as before.

What to connect with comes from the settings through :func:`connect_options` (CONTRACT section 8,
"Connections"): the servers, a connection name saying which program on which host, the user and
password, token, nkey seed or creds, and TLS. A connection that asks for TLS (a ``tls://`` URL or
a TLS setting) never goes on without it: nats-py alone speaks plain text to a server that does
not require TLS, password included.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from asyncio import FIRST_COMPLETED
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import nats.errors
from nats.aio.client import Client

from worker.settings import Settings, tls_context

log = logging.getLogger(__name__)
ErrorCallback = Callable[[Exception], Awaitable[None]]
Callback = Callable[[], Awaitable[None]]
DEFAULT_CONNECT_TIMEOUT_S = 20.0
_CLOSE_TIMEOUT_S = 1.0  # closing an abandoned client (nats-py can wait for ever on a TLS socket)
_CANCEL_TRIES = 50
_NO_ANSWER = "timed out: no answer from the server"
_AUTH_REFUSALS = ("authorization violation", "authentication expired", "authentication revoked")
_CONNECTING_ERRORS = (OSError, TimeoutError, nats.errors.Error)
_AUTH_HINT = "check the user, password, token, nkey or creds"
_CLIENT_CERT_HINT = (
    "the server verifies client certificates: RMOS_NATS_TLS_CERT and RMOS_NATS_TLS_KEY must "
    "name one its CA signed"
)


def _not_eof_noise(record: logging.LogRecord) -> bool:
    """asyncio warns on every close of a TLS connection of nats-py (its protocol's
    ``eof_received`` returns True, which TLS ignores): noise after every TLS command."""
    return not record.getMessage().startswith("returning true from eof_received()")


logging.getLogger("asyncio").addFilter(_not_eof_noise)


def servers(url: str) -> list[str]:
    """The servers of ``RMOS_NATS_URL``: one URL or a comma-separated list (nats-py wants a
    list; a comma inside one string is refused there)."""
    found = [part.strip() for part in url.split(",") if part.strip()]
    if not found:
        raise ValueError("no NATS server URL given")
    return found


def _userinfo_replaced(server: str, by: str) -> str:
    """``server`` with its user information (up to the last ``@`` of its authority) replaced
    by ``by`` (``"***@"`` to mask it, ``""`` to drop it)."""
    scheme, sep, rest = server.partition("://")
    if not sep:
        scheme, rest = "", server
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    _, at, host = rest[:end].rpartition("@")
    if not at:
        return server
    return f"{scheme}{sep}{by}{host}{rest[end:]}"


def _masked(server: str) -> str:
    return _userinfo_replaced(server, "***@")


def shown(url: str) -> str:
    """The URL setting as it may be shown: the user information of every server masked
    (``nats://alice:s3cret@h:4222,nats://tok@h2:4222`` -> ``nats://***@h:4222,nats://***@h2:4222``)."""
    return ",".join(_masked(part.strip()) for part in url.split(",") if part.strip())


def _secrets(urls: Iterable[str], options: dict[str, Any]) -> set[str]:
    """The passwords and tokens in ``urls`` and ``options`` (a URL's user is a token when it
    has no password), as written and percent-decoded."""
    found: set[str] = set()
    for url in urls:
        netloc = urlsplit(url if "://" in url else f"//{url}").netloc
        userinfo, at, _ = netloc.rpartition("@")
        if at:
            user, colon, password = userinfo.partition(":")
            found.add(password if colon else user)
    found |= {str(options[key]) for key in ("password", "token") if options.get(key)}
    return {form for secret in found if secret for form in (secret, unquote(secret)) if form}


def _scrubbed(text: str, secrets: set[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def connection_name(program: str) -> str:
    """The name a connection is known by in the server's monitoring (``connz``) and in log
    lines: which program, on which host, which process (``rmos-worker@host1:4242``)."""
    return f"rmos-{program}@{socket.gethostname()}:{os.getpid()}"


def connect_options(settings: Settings, program: str, url: str | None = None) -> dict[str, Any]:
    """What ``program`` connects to NATS with, for :func:`first_connect` (or nats-py's
    ``connect``): ``servers`` (of ``url``, else ``RMOS_NATS_URL``), ``name``, and from the
    settings ``user`` and ``password``, ``token``, ``nkeys_seed`` or ``user_credentials``, and
    ``tls`` (an ``ssl.SSLContext``) for ``tls://`` URLs or when any TLS setting is given.
    With an explicit way to authenticate, the URLs' user information is dropped: the setting
    wins (nats-py would prefer the URL's). The values are secrets: show none of them."""
    found = servers(url or settings.nats_url or "")
    options: dict[str, Any] = {"name": connection_name(program)}
    if settings.nats_user is not None:
        options["user"] = settings.nats_user
    if settings.nats_password is not None:
        options["password"] = settings.nats_password.get_secret_value()
    if settings.nats_token is not None:
        options["token"] = settings.nats_token.get_secret_value()
    if settings.nats_nkey_seed is not None:
        options["nkeys_seed"] = str(settings.nats_nkey_seed)
    if settings.nats_creds is not None:
        options["user_credentials"] = str(settings.nats_creds)
    if len(options) > 1:
        found = [_userinfo_replaced(server, "") for server in found]
    if settings.tls_configured or any(_scheme(server) == "tls" for server in found):
        options["tls"] = tls_context(
            settings.nats_tls_ca, settings.nats_tls_cert, settings.nats_tls_key
        )
    return {"servers": found, **options}


def _scheme(server: str) -> str:
    scheme, sep, _ = server.partition("://")
    return scheme.lower() if sep else "nats"


class TlsRequiredError(nats.errors.Error):
    """TLS was asked for and the server does not offer it (nothing was sent to it)."""

    def __str__(self) -> str:
        return "nats: TLS required: the server does not offer TLS"


class _TlsOnlyClient(Client):
    """A nats-py client that never talks to a server without TLS: it upgrades where the
    server only offers TLS (``tls_available``) and refuses a server without it, before its
    CONNECT (credentials) is sent. nats-py 2.16's own client goes on in plain text."""

    verifies_clients = False  # the last server said it verifies client certificates

    async def _process_info(self, info: dict[str, Any], initial_connection: bool = False) -> None:
        if initial_connection:
            self.verifies_clients = bool(info.get("tls_verify"))
        server = self._current_server
        tcp = server is not None and server.uri.scheme in ("nats", "tls")  # not a websocket
        if initial_connection and tcp and not info.get("tls_required"):
            if not info.get("tls_available"):
                raise TlsRequiredError
            info["tls_required"] = True  # the same dict as the client's server info
        await super()._process_info(info, initial_connection)


class ConnectError(ConnectionError):
    """The first connection to NATS did not succeed. Its text is one line for an operator: the
    masked URL, the timeout and the last error, never a password or token."""


def readable(exc: BaseException) -> str:
    """An error of a connection attempt as an operator reads it."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS handshake failed: certificate verify failed ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        return f"TLS handshake failed: {reason.replace('_', ' ').lower()}"
    if isinstance(exc, nats.errors.Error):
        text = str(exc).removeprefix("nats:").strip().strip("'")
        if _is_authorization(exc):
            return f"{text.lower()}: {_AUTH_HINT}"
        return text
    if isinstance(exc, TimeoutError):
        return _NO_ANSWER
    if isinstance(exc, ConnectionRefusedError) or "[Errno 111]" in str(exc):
        return "connection refused"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return str(exc) or type(exc).__name__


def _is_authorization(exc: BaseException) -> bool:
    if isinstance(exc, nats.errors.AuthorizationError):
        return True
    text = str(exc).lower()
    return isinstance(exc, nats.errors.Error) and any(refusal in text for refusal in _AUTH_REFUSALS)


def _is_permanent(exc: BaseException) -> bool:
    """An error that another attempt at the same server cannot fix."""
    permanent = (ssl.SSLCertVerificationError, TlsRequiredError)
    return isinstance(exc, permanent) or _is_authorization(exc)


@dataclass
class _Attempt:
    """The state of one first connection: the errors seen, and whether it succeeded."""

    servers: int
    errors: list[BaseException] = field(default_factory=list)
    connected: bool = False
    hopeless: asyncio.Event = field(default_factory=asyncio.Event)
    gave_up: bool = False  # nats-py stopped trying by itself (no reconnect, attempts used up)

    def failed(self, exc: BaseException) -> None:
        self.errors.append(exc)
        if sum(1 for error in self.errors if _is_permanent(error)) >= self.servers:
            self.hopeless.set()

    def ended(self, exc: BaseException | None) -> None:
        """nats-py raised ``exc``: usually the last error it reported, else the reason."""
        if exc is None or exc in self.errors:
            return
        if not (isinstance(exc, nats.errors.NoServersError) and self.errors):
            self.errors.append(exc)


class _Callbacks:
    """nats-py's callbacks of one connection. During the first connection errors are recorded
    and nothing else is called; after it, the caller's callbacks. An error without a callback
    is a warning line, no traceback, not repeated while the same error recurs until the
    connection is back: an outage of NATS logs a line, not one a second."""

    def __init__(self, attempt: _Attempt, options: dict[str, Any], name: str | None) -> None:
        self._attempt = attempt
        self._name = name or "NATS"
        self._error_cb: ErrorCallback | None = options.pop("error_cb", None)
        self._disconnected_cb: Callback | None = options.pop("disconnected_cb", None)
        self._reconnected_cb: Callback | None = options.pop("reconnected_cb", None)
        self._closed_cb: Callback | None = options.pop("closed_cb", None)
        self._said: set[str] = set()

    def options(self) -> dict[str, Any]:
        return {
            "error_cb": self.on_error,
            "disconnected_cb": self.on_disconnected,
            "reconnected_cb": self.on_reconnected,
            "closed_cb": self.on_closed,
        }

    async def on_error(self, exc: Exception) -> None:
        if not self._attempt.connected:
            self._attempt.failed(exc)
        elif self._error_cb is not None:
            await self._error_cb(exc)
        else:
            text = readable(exc)
            level = logging.DEBUG if text in self._said else logging.WARNING
            log.log(level, "%s connection: %s", self._name, text)
            self._said.add(text)

    async def on_disconnected(self) -> None:
        if self._attempt.connected and self._disconnected_cb is not None:
            await self._disconnected_cb()

    async def on_reconnected(self) -> None:
        if self._said:
            log.info("%s connection is back", self._name)
            self._said.clear()
        if self._reconnected_cb is not None:
            await self._reconnected_cb()

    async def on_closed(self) -> None:
        if self._attempt.connected and self._closed_cb is not None:
            await self._closed_cb()


async def first_connect(
    servers: list[str], *, timeout: float, name: str | None = None, **options: Any
) -> Client:
    """A connection to one of ``servers``, made within ``timeout`` seconds, else
    :class:`ConnectError`. ``options`` go to nats-py's ``connect`` (default: reconnect for ever
    once connected, 1 s apart); its ``error_cb``, ``disconnected_cb`` and ``closed_cb`` are only
    called once connected. Gives up early on an authorization violation or a certificate that
    does not verify once there has been one per server. With a ``tls`` context, a server
    without TLS is refused (:class:`TlsRequiredError`), never spoken to in plain text."""
    attempt = _Attempt(len(servers))
    callbacks = _Callbacks(attempt, options, name)
    settings: dict[str, Any] = {"max_reconnect_attempts": -1, "reconnect_time_wait": 1, **options}
    client = Client() if options.get("tls") is None else _TlsOnlyClient()

    async def connect() -> None:
        await client.connect(
            servers,
            name=name,
            **callbacks.options(),
            **settings,
        )
        attempt.connected = True  # in the same step: no error of a live connection is missed

    connecting = asyncio.create_task(connect(), name=f"nats-first-connect-{name or ''}")
    hopeless = asyncio.create_task(attempt.hopeless.wait())
    try:
        await asyncio.wait({connecting, hopeless}, timeout=timeout, return_when=FIRST_COMPLETED)
    except asyncio.CancelledError:
        await _abandon(client, connecting)
        raise
    finally:
        hopeless.cancel()
        await asyncio.wait({hopeless})
    ended = connecting.done() and not connecting.cancelled()
    if ended and connecting.exception() is None:
        return client
    failure = connecting.exception() if ended else None
    attempt.gave_up = ended
    attempt.ended(failure)
    await _abandon(client, connecting)
    if failure is not None and not isinstance(failure, _CONNECTING_ERRORS):
        raise failure  # a bug (a bad option, say), not a server that cannot be reached
    verifies = isinstance(client, _TlsOnlyClient) and client.verifies_clients
    raise ConnectError(_message(servers, timeout, attempt, options, verifies))


async def _abandon(client: Client, connecting: asyncio.Task[None]) -> None:
    """Stop a first connection and close its client, leaving no task or socket behind."""
    await _cancelled(connecting)
    closing = asyncio.ensure_future(client.close())
    await asyncio.wait({closing}, timeout=_CLOSE_TIMEOUT_S)
    await _cancelled(closing)


async def _cancelled(task: asyncio.Future[None]) -> None:
    """``task`` done (cancelled unless it ended by itself), its outcome retrieved: its error is
    one of the attempt's, or that of a client that never got far enough to close."""
    for _ in range(_CANCEL_TRIES):  # nats-py can swallow a cancel: Python 3.11's wait_for()
        if task.done():  # drops it when the attempt it waits for ends at the same moment
            if not task.cancelled():
                task.exception()
            return
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)
    log.warning("a first connection to NATS did not stop when cancelled")


def _message(
    servers: list[str],
    timeout: float,
    attempt: _Attempt,
    options: dict[str, Any],
    verifies_clients: bool = False,
) -> str:
    where = shown(",".join(servers))
    permanent = [error for error in attempt.errors if _is_permanent(error)]
    last = permanent[-1] if permanent else attempt.errors[-1] if attempt.errors else None
    reason = readable(last) if last is not None else _NO_ANSWER
    if verifies_clients and _dropped(last):  # such a server drops a client it cannot verify
        reason = f"{reason} ({_CLIENT_CERT_HINT})"
    if attempt.hopeless.is_set() or attempt.gave_up:
        text = f"cannot reach NATS at {where} (gave up before the {timeout:g} s timeout): {reason}"
    else:
        text = f"cannot reach NATS at {where} within {timeout:g} s: {reason}"
    return _scrubbed(" ".join(text.split()), _secrets(servers, options))


def _dropped(exc: BaseException | None) -> bool:
    """A connection reset or a TLS alert: not a timeout, not the server's certificate."""
    not_it = (TimeoutError, ssl.SSLCertVerificationError)
    return isinstance(exc, OSError) and not isinstance(exc, not_it)


def connector(
    options: Mapping[str, Any], *, timeout: float = DEFAULT_CONNECT_TIMEOUT_S
) -> Callable[[], Awaitable[Client]]:
    """Connects (when called) with ``options`` (:func:`connect_options`) within ``timeout``
    seconds (else :class:`ConnectError`), reconnecting for ever once connected."""

    def connect() -> Awaitable[Client]:
        return first_connect(**{"reconnect_time_wait": 1, **options}, timeout=timeout)

    return connect
