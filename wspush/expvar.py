"""The `-expvar` listener: counters on a separate address, so statistics need not be
exposed where clients connect. `/metrics` serves them for Prometheus; `/debug/vars` is
the document Go's expvar package serves for the Go program, key for key where wspush
can say the same thing:

    {"cmdline": [...], "memstats": {...},
     "wspush": {"sessions_seen": N, "messages_seen": N, "successful_deliveries": N, ...}}

The Go program publishes its three counters under `wspush` (`expvar.Publish`), so that
is where consumers (Telegraf's expvar input, Datadog's go_expvar check) read them;
wspush's own counters sit beside them there. `memstats` has only what this process
measures for real (see `memstats`): Go's allocator figures have no Python counterpart.
"""

from __future__ import annotations

import gc
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
        return JSONResponse(
            {
                "cmdline": sys.argv,
                "memstats": memstats(),
                "wspush": {**snapshot.stats, **snapshot.gauges},
            }
        )

    return Starlette(
        routes=[
            Route("/debug/vars", debug_vars),
            Route("/metrics", metrics_endpoint(registry)),
        ]
    )


def memstats() -> dict[str, int]:
    """The answering process's memory figures, under Go's names where the meaning is Go's.

    `HeapObjects` (objects allocated now) and `NumGC` (garbage collections completed,
    all generations of CPython's cyclic collector) mean what they mean in Go. `RSS` and
    `MaxRSS` (resident and peak resident bytes, from /proc/self/status) are wspush's: Go
    reports address space it reserved (`Sys`, `HeapSys`) and bytes its allocator handed
    out (`Alloc`, `TotalAlloc`), which CPython does not count, so they are left out
    rather than filled with look-alikes.
    """
    figures = {
        "HeapObjects": sys.getallocatedblocks(),
        "NumGC": sum(generation["collections"] for generation in gc.get_stats()),
    }
    return figures | resident_memory()


def resident_memory() -> dict[str, int]:
    """`RSS` and `MaxRSS` in bytes, where /proc has them (Linux); else nothing."""
    names = {"VmRSS:": "RSS", "VmHWM:": "MaxRSS"}
    figures: dict[str, int] = {}
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                field, _, value = line.partition("\t")
                if field in names:
                    figures[names[field]] = int(value.split()[0]) * 1024  # kB
    except OSError:
        return {}
    return figures


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
