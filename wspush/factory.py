"""The app factory: `create_app(settings)` builds one complete, independent wspush app."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.routing import Route, WebSocketRoute

from wspush.demo import demo_routes
from wspush.dispatch import RelayApp
from wspush.endpoints import AnyMethod, Endpoints
from wspush.engine.handshake import lift_websockets_head_limits
from wspush.logs import configure_logging, quiet_unfinished_on_purpose
from wspush.relay import Relay
from wspush.settings import Settings, load_env_file


def create_app(settings: Settings | None = None) -> Starlette:
    """A Starlette app relaying Redis to WebSocket and SSE clients.

    Without `settings`, they are read from the environment (see `settings_from_environment`).

    Its lifespan owns the Redis subscriber. Mounted inside another app, enter
    `app.state.relay.lifespan()` from the parent's lifespan (Starlette does not run
    the lifespan of a mounted app).
    """
    if settings is None:
        settings = settings_from_environment()
    quiet_unfinished_on_purpose()
    relay = Relay(settings)
    lift_websockets_head_limits()  # so every WebSocket head gets the relay's answer
    endpoints = Endpoints(
        settings, relay.hub, relay.subscriber, relay.stats, relay.metrics, relay.resumer
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with relay.lifespan():
            yield

    metrics = [Route("/metrics", AnyMethod(endpoints.metrics))] if settings.metrics else []
    app = RelayApp(
        endpoints,
        routes=[
            Route("/ping", AnyMethod(endpoints.ping)),
            Route("/ready", AnyMethod(endpoints.ready)),
            *metrics,
            *demo_routes(settings),
            Route("/{path:path}", AnyMethod(endpoints.http)),
            WebSocketRoute("/{path:path}", endpoints.websocket),
        ],
        lifespan=lifespan,
    )
    app.state.relay = relay
    return app


def settings_from_environment() -> Settings:
    """Settings from `WSPUSH_*` variables and a `.env` file, with logging set up to match.

    This is the path of `uvicorn wspush.app:app`, where nobody else configures wspush.
    """
    load_env_file()
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    return settings
