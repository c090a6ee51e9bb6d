"""How a program reaches NATS: the server list of a URL setting."""

from __future__ import annotations


def servers(url: str) -> list[str]:
    """The servers of ``RMOS_NATS_URL``: one URL or a comma-separated list (nats-py wants a
    list; a comma inside one string is refused there)."""
    found = [part.strip() for part in url.split(",") if part.strip()]
    if not found:
        raise ValueError("no NATS server URL given")
    return found
