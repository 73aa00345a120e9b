"""The `-expvar` listener: counters on a separate address, so statistics need not be
exposed where clients connect. `/debug/vars` is JSON with the Go program's keys (as
Go's expvar package serves it); `/metrics` is the same data for Prometheus."""

from __future__ import annotations

import socket
import sys

import uvicorn
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from wspush.metrics import SnapshotSource, metrics_endpoint
from wspush.settings import parse_address


def expvar_app(source: SnapshotSource, registry: CollectorRegistry) -> Starlette:
    async def debug_vars(request: Request) -> JSONResponse:
        snapshot = source()
        return JSONResponse({"cmdline": sys.argv, **snapshot.stats, **snapshot.gauges})

    return Starlette(
        routes=[
            Route("/debug/vars", debug_vars),
            Route("/metrics", metrics_endpoint(registry)),
        ]
    )


class ExpvarServer:
    """A second uvicorn server in the same event loop, started and stopped by the relay.

    With several worker processes, every worker serves it on one socket the supervisor
    bound (`sock`), and each answers with the figures of all workers.
    """

    def __init__(
        self,
        address: str,
        source: SnapshotSource,
        registry: CollectorRegistry,
        sock: socket.socket | None = None,
    ) -> None:
        host, port = parse_address("expvar", address)
        config = uvicorn.Config(
            expvar_app(source, registry),
            host=host,
            port=port,
            lifespan="off",
            log_config=None,
            access_log=False,
        )
        config.load()
        self.sock = sock
        self.server = uvicorn.Server(config)
        # Server.startup() expects the lifespan that serve() would have created.
        self.server.lifespan = config.lifespan_class(config)

    async def start(self) -> None:
        await self.server.startup(sockets=None if self.sock is None else [self.sock])

    async def stop(self) -> None:
        await self.server.shutdown()
