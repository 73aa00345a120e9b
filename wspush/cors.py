"""CORS: the Go program puts `Access-Control-Allow-Origin: *` on every response; wspush
does the same, or echoes the request's Origin when an allow-list is set.

`cors_headers_for` makes the one decision, once per app (`Endpoints.cors_headers`);
everything that writes an answer asks it: the app (`RelayApp`, through `CORSSend`) for
every HTTP response and the heads of streams a server opens for it, the WebSocket
refusals before an upgrade, and the 431 wspush's HTTP protocol writes for a request
head it stops reading. (Starlette's CORSMiddleware only answers requests that carry an
Origin header; wspush's contract is that every response has the header.)
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import Message, Scope, Send

CORSDecision = Callable[[Scope], list[tuple[bytes, bytes]]]


def cors_headers_for(allowed: tuple[str, ...]) -> CORSDecision:
    """Access-Control-Allow-Origin for a request: '*', or the request's Origin if listed.

    Only `scope["headers"]` is read, so a request whose head was cut short (only the
    headers read so far) gets an answer too.
    """
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
