"""A JetStream cluster of real ``nats-server`` processes on loopback, for tests and benchmarks.

Each node has its own store dir and fixed ports (client, route, monitoring) picked once, so a
node killed and started again comes back where it was and catches up from its peers. Ready means
every node answers ``/healthz`` and the JetStream meta leader sees every peer current (before
that, a new stream with 3 replicas may find "no suitable peers for placement").
"""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from worker.nats_server import NatsServer, NatsServerError


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class NatsCluster:
    """``size`` nodes named ``n0``..; ``url`` lists every client URL, comma-separated."""

    def __init__(
        self, root: Path, size: int = 3, name: str = "rmos", sync_always: bool = False
    ) -> None:
        self.host = "127.0.0.1"
        routes = [free_port() for _ in range(size)]
        self.monitor_ports = [free_port() for _ in range(size)]
        self.nodes: list[NatsServer] = []
        for i in range(size):
            peers = ",".join(f"nats://{self.host}:{p}" for j, p in enumerate(routes) if j != i)
            args = [
                "--server_name", f"n{i}", "--cluster_name", name,
                "--cluster", f"nats://{self.host}:{routes[i]}", "--routes", peers,
                "-m", str(self.monitor_ports[i]),
            ]  # fmt: skip
            if sync_always:  # fsync every write before its PubAck (no command-line flag for it)
                conf = root / f"n{i}.conf"
                conf.parent.mkdir(parents=True, exist_ok=True)
                conf.write_text("jetstream { sync_interval: always }\n")
                args += ["-c", str(conf)]
            self.nodes.append(NatsServer(root / f"n{i}", port=free_port(), extra_args=args))

    @property
    def url(self) -> str:
        return ",".join(node.url for node in self.nodes)

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    async def start(self, timeout: float = 30.0) -> str:
        await asyncio.gather(*(node.start(timeout) for node in self.nodes))
        await self.wait_healthy(timeout)
        return self.url

    async def start_node(self, i: int, timeout: float = 30.0) -> None:
        """Start node ``i`` again (same ports, same store) and wait until it is healthy."""
        await self.nodes[i].start(timeout)
        await self.wait_healthy(timeout, nodes=[i])

    async def wait_healthy(self, timeout: float = 30.0, nodes: list[int] | None = None) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pending = list(range(len(self.nodes)) if nodes is None else nodes)
        while pending:
            ok = await asyncio.gather(*(asyncio.to_thread(self._healthy, i) for i in pending))
            pending = [i for i, good in zip(pending, ok, strict=True) if not good]
            if not pending and not await asyncio.to_thread(self._meta_complete):
                pending = [-1]  # the meta group is still forming
            if pending and loop.time() > deadline:
                raise NatsServerError(f"nodes {pending} not healthy after {timeout}s")
            if pending:
                await asyncio.sleep(0.1)

    def _healthy(self, i: int) -> bool:
        url = f"http://{self.host}:{self.monitor_ports[i]}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                return bool(reply.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _meta_complete(self) -> bool:
        """Whether the meta leader sees every other live node as a current peer."""
        live = [i for i, node in enumerate(self.nodes) if node.pid is not None]
        for i in live:
            meta = self._get_json(i, "/jsz").get("meta_cluster") or {}
            if meta.get("leader") == f"n{i}":
                current = {r["name"] for r in meta.get("replicas") or [] if r.get("current")}
                return current >= {f"n{j}" for j in live if j != i}
        return False

    def _get_json(self, i: int, path: str) -> dict[str, Any]:
        try:
            url = f"http://{self.host}:{self.monitor_ports[i]}{path}"
            with urllib.request.urlopen(url, timeout=2) as reply:
                found: dict[str, Any] = json.loads(reply.read())
                return found
        except (urllib.error.URLError, OSError, ValueError):
            return {}

    def index_of(self, server_name: str) -> int:
        return int(server_name.removeprefix("n"))

    async def kill(self, i: int) -> None:
        await self.nodes[i].kill()

    async def stop(self) -> None:
        await asyncio.gather(*(node.stop() for node in self.nodes))

    async def __aenter__(self) -> NatsCluster:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
