"""Serving one relay with uvicorn: the options wspush depends on, the engine (or plain
ASGI when the installed versions do not offer what it needs), a server that drains its
clients before uvicorn's own shutdown, and the garbage collector tuned for many
long-lived connections."""

from __future__ import annotations

import gc
import logging
from typing import Any

import uvicorn

from wspush.engine import compat
from wspush.factory import create_app
from wspush.logs import uvicorn_log_level
from wspush.relay import Relay
from wspush.settings import Settings

logger = logging.getLogger("wspush")

# Left for uvicorn's own shutdown after wspush has drained its clients.
UVICORN_GRACE = 1
GC_YOUNG_THRESHOLD = 50_000
ENGINE = {
    "http": "wspush.engine.front:FrontProtocol",
    "ws": "wspush.engine.websocket:WebSocketsSansIODirectProtocol",
}
STOCK = {"http": "httptools", "ws": "websockets-sansio"}


class DrainingServer(uvicorn.Server):
    """uvicorn, but on shutdown wspush closes its clients before uvicorn cuts them.

    uvicorn's own shutdown closes WebSockets with 1012 and waits for SSE responses;
    draining first gives WebSockets 1001 and SSE streams a clean end with a retry hint.
    """

    def __init__(self, config: uvicorn.Config, relay: Relay) -> None:
        super().__init__(config)
        self.relay = relay

    async def shutdown(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        for server in getattr(self, "servers", []):
            server.close()  # stop accepting before draining
        await self.relay.drain(self.relay.settings.shutdown_timeout)
        await super().shutdown(sockets)  # type: ignore[arg-type]


def protocols(settings: Settings) -> dict[str, Any]:
    """uvicorn's protocol options: the engine's, or, if the installed versions lack what
    it needs (one warning says what), uvicorn's stock ones with its keep-alive pings."""
    problem = compat.problem()
    if problem is None:
        # wspush's own timer sends every heartbeat, Ping frames included, one write each
        # (uvicorn's keep-alive would cost two timers and a pong parse per connection).
        return {**ENGINE, "ws_ping_interval": None, "ws_ping_timeout": None}
    logger.warning(
        "serving through uvicorn's stock protocols (plain ASGI, slower): the engine "
        "cannot run on the installed packages: %s",
        problem,
    )
    return {**STOCK, "ws_ping_interval": float(settings.ping_interval), "ws_ping_timeout": None}


def uvicorn_config(settings: Settings, app: object) -> uvicorn.Config:
    """uvicorn settings that wspush depends on (see README, 'Running under uvicorn')."""
    return uvicorn.Config(app, **uvicorn_options(settings))  # type: ignore[arg-type]


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    return dict(
        host=settings.host,
        port=settings.port,
        lifespan="on",
        log_config=None,  # wspush configures logging
        log_level=uvicorn_log_level(settings.log_level),
        access_log=False,
        # Client addresses (for --max-per-ip and logs) from these proxies' headers only.
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=settings.trusted_proxies or None,
        server_header=False,
        loop="uvloop",
        ws_max_size=settings.max_client_message,
        ws_per_message_deflate=settings.ws_compression,
        timeout_graceful_shutdown=UVICORN_GRACE,
        **protocols(settings),
    )


def serve_one(settings: Settings) -> None:
    """Run one relay in this process until told to stop (exit status 1 if it could not
    start, for example on an address in use)."""
    app = create_app(settings)
    tune_garbage_collector()
    server = DrainingServer(uvicorn_config(settings, app), app.state.relay)
    server.run()  # on uvloop
    if not server.started:
        raise SystemExit(1)


def tune_garbage_collector() -> None:
    """Keep the cyclic GC from rescanning every connection's objects over and over.

    Each connection holds a few hundred small objects; with CPython's default
    thresholds a full collection runs every few hundred connections and walks them
    all, which made accepting 10,000 connections take seconds. Start-up objects are
    frozen out of collections, and collections run a hundredth as often.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 50, 1000)
