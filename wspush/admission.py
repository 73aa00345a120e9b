"""Who may open a stream: the one place every connection is admitted or refused.

Request head size (`--max-request-head`), origin (`--ws-origins`, WebSocket only),
token (plain, HMAC or JWT, with a JWT's expiry: `wspush.access`), the hub's limits, and
the counting of it all happen in `Admission.admit`, whichever path the connection takes:
the engine's task-free openers and the ASGI endpoints both call it. A verdict is kept in
the scope, so a connection the engine declines to open without a task, and then hands
to the ASGI endpoint, is still admitted, counted (`sessions_seen`, the refusal's
counter) and logged exactly once.
"""

from __future__ import annotations

from starlette.types import Scope

from wspush.access import Access, Grant
from wspush.contract import (
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_POLICY_VIOLATION,
    CLOSE_TRY_AGAIN_LATER,
    HEAD_LIMITED,
)
from wspush.hub import AtCapacity, Draining, Hub, PeerFull, Subscription, TokenFull, Transport
from wspush.jwt_tokens import TOKEN_EXPIRED
from wspush.logs import RefusalLog
from wspush.settings import Settings
from wspush.stats import Stats
from wspush.tokens import TokenError

# Where a connection's refusal is kept in its scope, once decided.
REFUSAL = "wspush.refusal"
LOGGED_PATH = 200  # characters of a refused request's path in its log line


class Refusal(Exception):
    """A connection the relay will not serve, with the HTTP status and close code to say so."""

    def __init__(self, status: int, close_code: int, reason: str, counter: str) -> None:
        super().__init__(reason)
        self.status = status
        self.close_code = close_code
        self.reason = reason
        self.counter = counter


def is_sse_request(scope: Scope) -> bool:
    """Go's rule: the path ends in /sse, or Accept mentions text/event-stream."""
    if scope["path"].endswith("/sse"):
        return True
    return any(
        name == b"accept" and value.find(b"text/event-stream") >= 0
        for name, value in scope["headers"]
    )


class Admission:
    """The relay's door: origin, token and limits, each outcome counted once."""

    def __init__(self, settings: Settings, hub: Hub, stats: Stats, log: RefusalLog) -> None:
        self.settings = settings
        self.access = Access(settings)
        self.hub = hub
        self.stats = stats
        self.log = log

    def admit(self, scope: Scope, transport: Transport) -> Subscription:
        """The hub's place for the connection, or the `Refusal` it gets (counted and
        logged here; asked again for the same scope, the same refusal, not counted)."""
        decided: Refusal | None = scope.get(REFUSAL)
        if decided is not None:
            raise decided
        self.stats.sessions_seen += 1
        try:
            self._check_request_head(scope)
            if transport is Transport.WEBSOCKET:
                self._check_origin(scope)
            grant = self._authorize(scope)
            if transport is Transport.SSE and not is_sse_request(scope):
                raise Refusal(
                    426,
                    0,
                    "this path serves WebSocket; use /sse for Server-Sent Events",
                    "refused_not_websocket",
                )
            return self._subscribe(grant, transport, scope)
        except Refusal as refusal:
            self._count(refusal, scope)
            scope[REFUSAL] = refusal
            raise

    def refused(self, refusal: Refusal, scope: Scope) -> None:
        """Count a connection a server refused before it could be admitted (a request
        head wspush's HTTP protocol stopped reading): one session, one refusal."""
        self.stats.sessions_seen += 1  # an attempt, as on every other path
        self._count(refusal, scope)

    def _check_request_head(self, scope: Scope) -> None:
        """The --max-request-head limit where the server has read the whole head already
        (a stock uvicorn reads heads of any size): the client still gets its 431."""
        if HEAD_LIMITED in (scope.get("extensions") or ()):
            return  # wspush's HTTP protocol did, as it read it
        limit = self.settings.max_request_head
        if request_head_size(scope) > limit:
            raise request_head_refusal(limit)

    def _check_origin(self, scope: Scope) -> None:
        """With --ws-origins, only pages from those origins may open a WebSocket.

        Browsers do not apply CORS to WebSockets, so without this any site could open
        one with the user's cookies (cross-site WebSocket hijacking).
        """
        allowed = self.settings.allowed_ws_origins
        if not allowed:
            return
        origin = next((value for name, value in scope["headers"] if name == b"origin"), None)
        if origin not in allowed:
            raise Refusal(403, CLOSE_POLICY_VIOLATION, "origin not allowed", "refused_origin")

    def _authorize(self, scope: Scope) -> Grant:
        try:
            return self.access.grant(scope["query_string"])
        except TokenError as exc:
            reason = str(exc)
            counter = "refused_token_expired" if reason == TOKEN_EXPIRED else "refused_bad_token"
            raise Refusal(400, CLOSE_POLICY_VIOLATION, reason, counter) from None

    def _subscribe(self, grant: Grant, transport: Transport, scope: Scope) -> Subscription:
        client = scope.get("client")
        peer = client[0] if client else ""
        try:
            return self.hub.subscribe(grant.route, transport, peer, grant.expires)
        except TokenFull:
            raise Refusal(
                429,
                CLOSE_TRY_AGAIN_LATER,
                f"token already has {self.settings.max_per_token} connections",
                "refused_token_limit",
            ) from None
        except AtCapacity:
            raise Refusal(
                503, CLOSE_TRY_AGAIN_LATER, "server is at its connection limit", "refused_capacity"
            ) from None
        except PeerFull:
            raise Refusal(
                429,
                CLOSE_TRY_AGAIN_LATER,
                f"this address already has {self.settings.max_per_ip} connections",
                "refused_ip_limit",
            ) from None
        except Draining:
            raise Refusal(
                503, CLOSE_TRY_AGAIN_LATER, "server is shutting down", "refused_draining"
            ) from None

    def _count(self, refusal: Refusal, scope: Scope) -> None:
        setattr(self.stats, refusal.counter, getattr(self.stats, refusal.counter) + 1)
        client = scope.get("client")
        self.log.refused(
            refusal.counter,
            "refused %s %s from %s: %d %s",
            scope["type"],
            scope.get("path", "?")[:LOGGED_PATH],
            client[0] if client else "?",
            refusal.status,
            refusal.reason,
            detail=refusal.reason,  # a line for each reason: a bad key is not a bad clock
        )


def request_head_size(scope: Scope) -> int:
    """The bytes of a request head as the client sent it, from its scope: the request
    line and the header lines (less any blanks the parser dropped around values)."""
    target = len(scope.get("raw_path") or scope["path"].encode()) + len(scope["query_string"])
    size = len(scope.get("method", "GET")) + target
    size += len(" ? HTTP/1.1\r\n\r\n")
    for name, value in scope["headers"]:
        size += len(name) + len(value) + 4  # ": " and CRLF
    return size


def request_head_refusal(limit: int) -> Refusal:
    return Refusal(
        431,
        CLOSE_MESSAGE_TOO_BIG,
        f"request head larger than {limit} bytes",
        "refused_request_head",
    )
