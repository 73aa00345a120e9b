"""The `-expvar` listener: JSON counters at /debug/vars on a separate address, like Go's
expvar package, so statistics need not be exposed where clients connect."""

from __future__ import annotations

import sys
from collections.abc import Callable

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from wspush.settings import parse_address
from wspush.stats import Stats

Gauges = Callable[[], dict[str, int]]


def expvar_app(stats: Stats, gauges: Gauges) -> Starlette:
    async def debug_vars(request: Request) -> JSONResponse:
        return JSONResponse({"cmdline": sys.argv, **stats.as_dict(), **gauges()})

    return Starlette(routes=[Route("/debug/vars", debug_vars)])


class ExpvarServer:
    """A second uvicorn server in the same event loop, started and stopped by the relay."""

    def __init__(self, address: str, stats: Stats, gauges: Gauges) -> None:
        host, port = parse_address("expvar", address)
        config = uvicorn.Config(
            expvar_app(stats, gauges),
            host=host,
            port=port,
            lifespan="off",
            log_config=None,
            access_log=False,
        )
        config.load()
        self.server = uvicorn.Server(config)
        # Server.startup() expects the lifespan that serve() would have created.
        self.server.lifespan = config.lifespan_class(config)

    async def start(self) -> None:
        await self.server.startup()

    async def stop(self) -> None:
        await self.server.shutdown()
