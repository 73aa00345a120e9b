"""CORS: the Go program puts `Access-Control-Allow-Origin: *` on every response; wspush
does the same, or echoes the request's Origin when an allow-list is set."""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import Message, Scope, Send


def cors_headers_for(allowed: tuple[str, ...]) -> Callable[[Scope], list[tuple[bytes, bytes]]]:
    """Access-Control-Allow-Origin for a request: '*', or the request's Origin if listed."""
    if allowed == ("*",):
        star = [(b"access-control-allow-origin", b"*")]
        return lambda scope: star
    listed = {origin.encode() for origin in allowed}
    vary = (b"vary", b"Origin")

    def headers(scope: Scope) -> list[tuple[bytes, bytes]]:
        for name, value in scope["headers"]:
            if name == b"origin" and value in listed:
                return [(b"access-control-allow-origin", value), vary]
        return [vary]

    return headers


class CORSHeaders:
    """The CORS header of every HTTP response, as the Go program sends it.

    Starlette's CORSMiddleware only answers requests that carry an Origin header;
    wspush's contract is that every response has the header. The app (`RelayApp`) puts
    it on every response it sends, and on the heads of streams a server opens for it.
    """

    def __init__(self, allowed: tuple[str, ...]) -> None:
        self.headers_for = cors_headers_for(allowed)

    def wrap_send(self, scope: Scope, send: Send) -> CORSSend:
        """`send` for an HTTP request, adding the CORS header to the response start."""
        return CORSSend(send, self.headers_for(scope))


class CORSSend:
    """An HTTP request's `send` that adds the CORS header to the response start, and
    remembers whether the response has started.

    One small object rather than a closure: an SSE stream keeps it for its whole life.
    """

    __slots__ = ("extra", "send", "started")

    def __init__(self, send: Send, extra: list[tuple[bytes, bytes]]) -> None:
        self.send = send
        self.extra = extra
        self.started = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            message["headers"] = [*message.get("headers", []), *self.extra]
        await self.send(message)
