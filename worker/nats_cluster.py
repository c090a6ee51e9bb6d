"""A JetStream cluster of real ``nats-server`` processes on loopback, for tests and benchmarks.

Each node has its own store dir and fixed ports (client, route, monitoring) picked once, so a
node killed and started again comes back where it was and catches up from its peers. Ready means
every node answers ``/healthz`` and the JetStream meta leader sees every peer current (before
that, a new stream with 3 replicas may find "no suitable peers for placement").
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from worker.nats_server import NatsServer, NatsServerError

# Fixed ports are picked below Linux's ephemeral range (32768-60999), where the kernel never hands
# them to outgoing connections or to servers started on port 0 meanwhile; a port taken anyway
# before the node binds it makes the cluster start again on other ports.
_PORTS = (10000, 32000)
_START_ATTEMPTS = 3


def free_port(host: str = "127.0.0.1") -> int:
    """A port below the ephemeral range that nothing listens on now."""
    for _ in range(100):
        port = random.randrange(*_PORTS)
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise NatsServerError(f"no free port in {_PORTS}")


class NatsCluster:
    """``size`` nodes named ``n0``..; ``url`` lists every client URL, comma-separated."""

    def __init__(
        self, root: Path, size: int = 3, name: str = "rmos", sync_always: bool = False
    ) -> None:
        self.host = "127.0.0.1"
        self.root = root
        self.size = size
        self.name = name
        self.sync_always = sync_always
        self.monitor_ports: list[int] = []
        self.nodes: list[NatsServer] = []
        self._place()

    def _place(self) -> None:
        """Nodes on newly picked ports (client, route, monitoring), with routes to each other."""
        routes = [free_port() for _ in range(self.size)]
        self.monitor_ports = [free_port() for _ in range(self.size)]
        self.nodes = []
        for i in range(self.size):
            peers = ",".join(f"nats://{self.host}:{p}" for j, p in enumerate(routes) if j != i)
            args = [
                "--server_name", f"n{i}", "--cluster_name", self.name,
                "--cluster", f"nats://{self.host}:{routes[i]}", "--routes", peers,
                "-m", str(self.monitor_ports[i]),
            ]  # fmt: skip
            if self.sync_always:  # fsync every write before its PubAck (no command-line flag)
                conf = self.root / f"n{i}.conf"
                conf.parent.mkdir(parents=True, exist_ok=True)
                conf.write_text("jetstream { sync_interval: always }\n")
                args += ["-c", str(conf)]
            node = NatsServer(self.root / f"n{i}", port=free_port(), extra_args=args)
            self.nodes.append(node)

    @property
    def url(self) -> str:
        return ",".join(node.url for node in self.nodes)

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    async def start(self, timeout: float = 30.0) -> str:
        for attempt in range(1, _START_ATTEMPTS + 1):
            started = await asyncio.gather(
                *(node.start(timeout) for node in self.nodes), return_exceptions=True
            )
            failures = [r for r in started if isinstance(r, BaseException)]
            if not failures:
                break
            await self.stop()
            taken = all("address already in use" in str(f) for f in failures)
            if not taken or attempt == _START_ATTEMPTS:
                raise failures[0]
            self._place()
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
