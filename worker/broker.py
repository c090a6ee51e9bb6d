"""The FastStream broker of the worker and the reference explainer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import nats.errors
from faststream.nats import NatsBroker
from nats.aio.client import Client

from worker.connection import DEFAULT_CONNECT_TIMEOUT_S, first_connect
from worker.logs import BROKER_LOGGER, take_over_faststream

log = logging.getLogger(__name__)
STOP_TIMEOUT_S = 30.0


class Broker(NatsBroker):
    """A NatsBroker whose first connection is bounded (:func:`worker.connection.first_connect`:
    :class:`~worker.connection.ConnectError` after ``first_connect_timeout`` seconds, or sooner
    on an error that retrying cannot fix) and whose stop cannot hang or fail on a connection
    that is already gone.

    ``connect`` is what :func:`worker.connection.connect_options` gives: the servers and the
    connection name go to FastStream; the credentials and TLS context only to nats-py's
    ``connect`` (FastStream's ``security`` would also put them in its AsyncAPI description)."""

    def __init__(
        self,
        connect: Mapping[str, Any],
        *args: Any,
        first_connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
        **kwargs: Any,
    ) -> None:
        # A plain logger, through the one logging set-up (worker.logs), instead of the one
        # FastStream makes: coloured, on stdout, not propagated.
        kwargs.setdefault("logger", logging.getLogger(BROKER_LOGGER))
        take_over_faststream()
        secure = dict(connect)
        servers = secure.pop("servers")
        super().__init__(servers, *args, name=secure.pop("name", None), **kwargs)
        self.first_connect_timeout = first_connect_timeout
        self._secure_options = secure

    async def _connect(self) -> Client:
        """FastStream's ``_connect``, through :func:`first_connect`. FastStream's error callback
        is left out: it logs every error of a live connection with a traceback and raises some
        inside nats-py's tasks; first_connect logs them as one warning line."""
        options = {**self._connection_kwargs, **self._secure_options}
        options.pop("error_cb", None)
        connection = await first_connect(
            list(options.pop("servers")),
            timeout=self.first_connect_timeout,
            name=options.pop("name", None),
            **options,
        )
        self.config.connect(connection)
        return connection

    async def stop(self, *args: Any, **kwargs: Any) -> None:
        try:
            await asyncio.wait_for(super().stop(*args, **kwargs), STOP_TIMEOUT_S)
        except (nats.errors.Error, TimeoutError) as exc:  # drain() can hang or refuse
            log.warning("NATS drain did not finish (%r); closing the connection", exc)
            connection, self._connection = self._connection, None
            if connection is not None:
                await connection.close()
            self.config.disconnect()
