"""The relay's Starlette app, with a short path for WebSocket and SSE connections.

A stream lives for hours, and every coroutine between the server and the endpoint stays
suspended for all that time: Starlette's error middleware, the CORS middleware, the
exception middleware, the router, the route and the request/response wrappers are about
fifteen frames and closures per connection, and the same chain costs CPU on every
connect. `RelayApp` sends streams straight to their endpoint and does itself the little
that chain does for them: an exception before the response starts gets Starlette's
plain 500, then propagates to the server, as through `ServerErrorMiddleware`.

Everything else (`/ping`, `/ready`, `/metrics`, `/demo`, lifespan) goes through Starlette
as usual, and so does everything once the app has been given routes, middleware,
exception handlers or debug mode of someone else's. Either way, every HTTP response gets
its CORS header here, from the endpoints' one decision (`Endpoints.cors_headers`);
WebSocket refusals carry it themselves.
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from wspush.contract import DirectWriter, WebSocketWriter
from wspush.cors import CORSSend
from wspush.endpoints import Endpoints, SSEStream, WebSocketStream


def route_path(scope: Scope) -> str:
    """The path the app's router matches: `path` without `root_path` (as Starlette does)."""
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if not root_path or not path.startswith(root_path):
        return path
    if path == root_path:
        return ""
    return path[len(root_path) :] if path[len(root_path)] == "/" else path


class RelayApp(Starlette):
    """wspush's routes (see `create_app`), with streams sent straight to their endpoint."""

    def __init__(self, endpoints: Endpoints, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.endpoints = endpoints
        self.cors_headers = endpoints.cors_headers
        self._own_setup = (list(self.routes), list(self.user_middleware))
        # Plain HTTP routes of fixed paths (/ping, /ready, /metrics, /demo) are served by
        # Starlette; the short path is for everything the catch-all routes would take.
        self.plain_paths = frozenset(
            route.path
            for route in self.routes
            if isinstance(route, Route) and "{" not in route.path
        )

    def _short_path_allowed(self) -> bool:
        """Only while the app is exactly as `create_app` built it."""
        routes, middleware = self._own_setup
        return (
            not self.debug
            and not self.exception_handlers
            and self.user_middleware == middleware
            and self.routes == routes
        )

    @property
    def max_request_head(self) -> int:
        """The most bytes a request head may take (for wspush's HTTP protocol)."""
        return self.endpoints.settings.max_request_head

    def refuse_request_head(self, scope: Scope) -> Response:
        """The answer to a longer head, which wspush's HTTP protocol stops reading."""
        return self.endpoints.refuse_request_head(scope)

    def open_websocket_now(self, scope: Scope, writer: WebSocketWriter) -> WebSocketStream | None:
        """A WebSocket accepted without a task, where the short path would take it (the
        server's side: `wspush.engine`); None to be called as usual."""
        if not self._short_path_allowed() or not route_path(scope).startswith("/"):
            return None
        scope["app"] = self
        return self.endpoints.open_websocket_now(scope, writer)

    def open_sse_now(self, scope: Scope, writer: DirectWriter) -> SSEStream | None:
        """An SSE stream opened without a task, where the short path would take it, with
        the CORS header on its head; None to be called as usual."""
        if not self._short_path_allowed():
            return None
        path = route_path(scope)
        if not path.startswith("/") or path in self.plain_paths:
            return None
        scope["app"] = self
        response = self.endpoints.open_sse_now(scope, writer)
        if response is not None:
            response.raw_headers = [*response.raw_headers, *self.cors_headers(scope)]
        return response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            send = CORSSend(send, self.cors_headers(scope))
        if kind == "lifespan" or not self._short_path_allowed():
            await super().__call__(scope, receive, send)
            return
        path = route_path(scope)
        if not path.startswith("/") or (kind == "http" and path in self.plain_paths):
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        if kind == "websocket":
            await self.endpoints.websocket(WebSocket(scope, receive, send))
            return
        try:
            response = await self.endpoints.http(Request(scope, receive, send))
            await response(scope, receive, send)
        except Exception:
            if not send.started:  # type: ignore[attr-defined]
                await PlainTextResponse("Internal Server Error", status_code=500)(
                    scope, receive, send
                )
            raise
