"""How a program reaches NATS: the server list of a URL setting, and connections to it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import nats
from nats.aio.client import Client


def servers(url: str) -> list[str]:
    """The servers of ``RMOS_NATS_URL``: one URL or a comma-separated list (nats-py wants a
    list; a comma inside one string is refused there)."""
    found = [part.strip() for part in url.split(",") if part.strip()]
    if not found:
        raise ValueError("no NATS server URL given")
    return found


def connector(url: str, name: str) -> Callable[[], Awaitable[Client]]:
    """Connects (when called) to ``url``'s servers, reconnecting for ever once connected."""

    def connect() -> Awaitable[Client]:
        return nats.connect(
            servers(url), name=name, max_reconnect_attempts=-1, reconnect_time_wait=1
        )

    return connect
