"""The scope uvicorn's proxy-headers middleware would pass on, for streams the engine
opens without calling the app through it.

Upstream touched (checked against uvicorn 0.54.0):
- `uvicorn.middleware.proxy_headers.ProxyHeadersMiddleware`: `app`, `trusted_hosts`
  and `trusted_hosts.get_trusted_client_address`, and what its `__call__` does to a
  scope (`client`, `scheme` from `X-Forwarded-For` and `X-Forwarded-Proto`);
  tests/test_engine.py compares the two.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware


def past_proxy_headers(app: Any) -> Any:
    """The app uvicorn's proxy-headers middleware wraps, or `app` if it is not that."""
    return app.app if isinstance(app, ProxyHeadersMiddleware) else app


def app_method(app: Any, name: str, scope: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """The app's method `name` if it has one (past uvicorn's proxy-headers middleware),
    and the ASGI app to call past that middleware; with a `scope`, and a method to call,
    the middleware's work is done on the scope here, in place."""
    proxy = app if isinstance(app, ProxyHeadersMiddleware) else None
    inner = past_proxy_headers(app)
    method = getattr(inner, name, None)
    if method is None:
        return None, app
    if proxy is not None and scope is not None:
        apply_proxy_headers(proxy, scope)
    return method, inner


def open_without_task(
    app: Any, name: str, scope: dict[str, Any], writer: Any, forwarded: bool = True
) -> tuple[Any, Any]:
    """Ask the app's `name` opener (`open_websocket_now`, `open_sse_now`) for a stream
    that needs no task, if the app has one, and say which app to call otherwise.

    uvicorn's proxy-headers middleware wraps the app: the opener gets the scope as the
    middleware would pass it on (applied here, in place), and when it declines, the
    server calls the app past the middleware with that same scope, so whatever the
    opener decided and kept in the scope (a refusal) reaches the app.
    `forwarded=False` says the head has none of the headers the middleware reads (see
    `forwarding_headers`), so there is nothing for it to do.
    Returns (the stream or None, the ASGI app to call when None).
    """
    opener, inner = app_method(app, name, scope if forwarded else None)
    if opener is None:
        return None, app
    return opener(scope, writer), inner


def forwarding_headers(fields: Mapping[bytes, bytes]) -> bool:
    """Whether a head (its header names, lowercase) has what the middleware reads."""
    return b"x-forwarded-for" in fields or b"x-forwarded-proto" in fields


def apply_proxy_headers(middleware: ProxyHeadersMiddleware, scope: dict[str, Any]) -> None:
    """Do to `scope` what uvicorn's proxy-headers middleware does: the client and scheme
    a trusted proxy forwarded."""
    client = scope.get("client")
    if not client or client[0] not in middleware.trusted_hosts:
        return
    proto: bytes | None = None
    forwarded_for: list[bytes] = []
    for name, value in scope["headers"]:
        if name == b"x-forwarded-proto":
            proto = value
        elif name == b"x-forwarded-for":
            forwarded_for.append(value)
    if proto is not None:
        scheme = proto.decode("latin1").strip()
        if scheme in {"http", "https", "ws", "wss"}:
            is_websocket = scope["type"] == "websocket"
            scope["scheme"] = scheme.replace("http", "ws") if is_websocket else scheme
    if forwarded_for:
        host, port = middleware.trusted_hosts.get_trusted_client_address(
            b", ".join(forwarded_for).decode("latin1")
        )
        if host:
            scope["client"] = (host, port)
