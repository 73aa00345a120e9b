"""The client side: `/ping`, `/ready`, Server-Sent Events and WebSocket endpoints.

Each connection subscribes to the hub and drains its own queue. SSE writes every
queued event in one body chunk; WebSocket sends one frame per message, as the Go
program does. Refusals get a precise status: 400 for a bad token, 429 when the token
has its maximum of connections, 503 while shutting down, 426 for a plain GET on a
WebSocket path, 405 for any method but GET, 431 for a request head over
`--max-request-head`; each with the CORS header, WebSocket refusals before the upgrade
included.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

from prometheus_client import CollectorRegistry
from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import request_response
from starlette.types import Message as ASGIMessage
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from wspush.access import Access, Grant
from wspush.cors import cors_headers_for
from wspush.hub import (
    AtCapacity,
    CloseReason,
    Draining,
    Encoder,
    Hub,
    Message,
    PeerFull,
    Subscription,
    TokenFull,
    Transport,
    counted,
)
from wspush.jwt_tokens import TOKEN_EXPIRED
from wspush.logs import RefusalLog
from wspush.metrics import metrics_endpoint
from wspush.protocols import DIRECT_WRITE, HEAD_LIMITED, DirectWriter, WebSocketDirectWriter
from wspush.settings import Settings
from wspush.stats import Stats
from wspush.subscriber import RedisSubscriber
from wspush.tokens import TokenError

logger = logging.getLogger("wspush.endpoints")

# WebSocket close codes (RFC 6455 section 7.4.1 and the IANA registry).
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY_VIOLATION = 1008
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_TRY_AGAIN_LATER = 1013
RETRY_AFTER_SECONDS = 5
LOGGED_PATH = 200  # characters of a refused request's path in its log line
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

Frame = Callable[[Message], "ASGIMessage | None"]


def is_sse_request(scope: Scope) -> bool:
    """Go's rule: the path ends in /sse, or Accept mentions text/event-stream."""
    if scope["path"].endswith("/sse"):
        return True
    return any(
        name == b"accept" and b"text/event-stream" in value for name, value in scope["headers"]
    )


class Refusal(Exception):
    """A connection the relay will not serve, with the HTTP status and close code to say so."""

    def __init__(self, status: int, close_code: int, reason: str, counter: str) -> None:
        super().__init__(reason)
        self.status = status
        self.close_code = close_code
        self.reason = reason
        self.counter = counter


class Endpoints:
    """The routes of one relay, bound to its settings, hub and counters."""

    def __init__(
        self,
        settings: Settings,
        hub: Hub,
        subscriber: RedisSubscriber,
        stats: Stats,
        metrics: CollectorRegistry,
    ) -> None:
        self.settings = settings
        self.access = Access(settings)
        self._last_refused: tuple[bytes, str] | None = None  # query string, reason
        self.serve_metrics = metrics_endpoint(metrics)
        self.refusal_log = RefusalLog()
        self.hub = hub
        self.subscriber = subscriber
        self.stats = stats
        self.frame = websocket_framer(settings.ws_frame)
        self.encode_frame = frame_encoder(settings.ws_frame)
        # The one CORS decision, for every answer the relay writes on any path.
        self.cors_headers = cors_headers_for(settings.allowed_origins)

    # -- plain HTTP ---------------------------------------------------------------------

    async def ping(self, request: Request) -> Response:
        """Liveness: 200 while the process serves HTTP, whatever Redis is doing."""
        if request.method != "GET":
            return self._method_not_allowed(request)
        return Response(status_code=200)

    async def ready(self, request: Request) -> Response:
        """Readiness: 200 only while the Redis subscription is live and not draining."""
        if request.method != "GET":
            return self._method_not_allowed(request)
        if self.subscriber.live and not self.hub.draining:
            return PlainTextResponse("ready\n")
        reason = "draining\n" if self.hub.draining else "redis subscription is down\n"
        return PlainTextResponse(reason, status_code=503)

    async def metrics(self, request: Request) -> Response:
        """Prometheus metrics for a plain GET; an SSE request to /metrics is a client."""
        if request.method == "GET" and not is_sse_request(request.scope):
            return await self.serve_metrics(request)
        return await self.http(request)

    async def http(self, request: Request) -> Response:
        """Any other HTTP request: an SSE stream, or a refusal."""
        if request.method != "GET":
            return self._method_not_allowed(request)
        self.stats.sessions_seen += 1
        try:
            token, subscription = self._admit_sse(request.scope)
        except Refusal as refusal:
            self._count_refusal(refusal, request.scope)
            return refusal_response(refusal)
        try:
            await self.subscriber.wait_subscribed(token)
        except BaseException:
            self.hub.unsubscribe(subscription)
            raise
        writer = direct_writer(request.scope)
        if writer is not None:
            return DirectSSEResponse(self, subscription, writer)
        return SSEResponse(self, subscription, request.scope)

    def open_sse_now(self, scope: Scope, writer: DirectWriter) -> DirectSSEResponse | None:
        """`http` for an SSE stream it would open at once, on a server that keeps it
        without a task (see `wspush.protocols`): the response, subscribed; the server
        sends its head, then calls `opened`, and `disconnected` when the client leaves.

        None for everything else, and the server calls `http` as usual: a refusal, a
        method other than GET, or exact mode's wait for Redis to confirm the channel.
        """
        if scope["method"] != "GET" or self.subscriber.confirms_subscriptions():
            return None
        try:
            _, subscription = self._admit_sse(scope)
        except Refusal:
            return None
        self.stats.sessions_seen += 1
        return DirectSSEResponse(self, subscription, writer)

    def _admit_sse(self, scope: Scope) -> tuple[bytes, Subscription]:
        """The route and the hub's place for an SSE stream, or the Refusal it gets."""
        self._check_request_head(scope)
        grant = self._authorize(scope)
        if not is_sse_request(scope):
            raise Refusal(
                426,
                0,
                "this path serves WebSocket; use /sse for Server-Sent Events",
                "refused_not_websocket",
            )
        return grant.route, self._subscribe(grant, Transport.SSE, scope)

    # -- WebSocket ----------------------------------------------------------------------

    async def websocket(self, websocket: WebSocket) -> None:
        self.stats.sessions_seen += 1
        try:
            token, subscription = self._admit_websocket(websocket.scope)
        except Refusal as refusal:
            self._count_refusal(refusal, websocket.scope)
            await deny_websocket(websocket, refusal, self.cors_headers(websocket.scope))
            return
        drain: BacklogSender | None = None
        try:
            await self.subscriber.wait_subscribed(token)  # exact mode: see wspush/interest.py
            await websocket.accept()
            # Pre-encoded frames are uncompressed: with compression on, frames go through
            # the server, which compresses each one for its connection.
            writer = None if self.settings.ws_compression else direct_writer(websocket.scope)
            drain = BacklogSender(self._send_queued, websocket, subscription, writer)
            if writer is None:
                drain()  # plain ASGI: one task sends everything, for the connection's life
            else:
                subscription.write_directly(writer, self.encode_frame, on_backlog=drain)
            await self._discard_client_frames(websocket)
        except (WebSocketDisconnect, OSError, RuntimeError):
            pass  # the client went away; nothing to tell it
        finally:
            if drain is not None:
                drain.cancel()
            self.hub.unsubscribe(subscription)

    def open_websocket_now(
        self, scope: Scope, writer: WebSocketDirectWriter
    ) -> TaskFreeWebSocket | None:
        """`websocket` for a connection it would accept at once, on a server that keeps
        it without a task (see `wspush.protocols`): the endpoint, subscribed.

        None for everything else, and the server calls `websocket` as usual: a refusal
        (which that answers, counts and logs), compression (frames go through the
        server), or exact mode's wait for Redis to confirm the channel.
        """
        if self.settings.ws_compression or self.subscriber.confirms_subscriptions():
            return None
        try:
            _, subscription = self._admit_websocket(scope)
        except Refusal:
            return None
        self.stats.sessions_seen += 1
        return TaskFreeWebSocket(self, subscription, writer)

    def _admit_websocket(self, scope: Scope) -> tuple[bytes, Subscription]:
        """The route and the hub's place for a WebSocket, or the Refusal it gets."""
        self._check_request_head(scope)
        self._check_origin(scope)
        grant = self._authorize(scope)
        return grant.route, self._subscribe(grant, Transport.WEBSOCKET, scope)

    async def _send_queued(
        self, websocket: WebSocket, subscription: Subscription, writer: DirectWriter | None
    ) -> None:
        """Send the queue: over plain ASGI for the connection's life; with direct writes
        only the backlog (a slow client, or the close), then the task ends.

        An idle WebSocket thus costs one task (the one reading client frames), not two.
        """
        close = functools.partial(close_websocket, websocket, subscription)
        if writer is not None:
            await write_backlog(subscription, writer, close)
            return
        queue = subscription.queue
        try:
            while True:
                message = await queue.get()
                subscription.busy = True
                if message is None:
                    await close()
                    return
                await self._send_frame(websocket, message)
                if queue.empty():
                    subscription.busy = False
        except (WebSocketDisconnect, OSError, RuntimeError):
            return  # the client went away mid-send

    async def _send_frame(self, websocket: WebSocket, message: Message) -> None:
        """The plain ASGI way, for servers without the direct-write extension."""
        event = counted(self.stats, message, self.frame(message))
        if event is not None:
            await websocket.send(event)
            data = event.get("bytes") or event.get("text") or b""
            self.stats.bytes_sent += len(data)
            if not message.is_heartbeat:
                self.hub.latency.observe(time.monotonic() - message.received)

    async def _discard_client_frames(self, websocket: WebSocket) -> None:
        """Read what the client sends and drop it, so a close is noticed at once."""
        limit = self.settings.max_client_message
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                data = message.get("bytes") or message.get("text") or ""
                if len(data) > limit:
                    logger.info("closing a WebSocket that sent %d bytes (max %d)", len(data), limit)
                    await websocket.close(CLOSE_MESSAGE_TOO_BIG)
                    return
        except (WebSocketDisconnect, OSError, RuntimeError):
            return

    # -- shared -------------------------------------------------------------------------

    def refuse_request_head(self, scope: Scope) -> Response:
        """The answer to a request head over `--max-request-head`, counted and logged, for
        a server that stops reading it (wspush's HTTP protocol): the scope has the
        headers read so far, enough for the CORS decision."""
        refusal = request_head_refusal(self.settings.max_request_head)
        self.stats.sessions_seen += 1  # an attempt, as on every other path
        self._count_refusal(refusal, scope)
        response = refusal_response(refusal)
        response.raw_headers += self.cors_headers(scope)
        return response

    def _check_request_head(self, scope: Scope) -> None:
        """The same limit where the server has read the whole head already (a stock
        uvicorn reads heads of any size): the client still gets its 431."""
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
        """The token's grant, or the Refusal it gets.

        A refused request is admitted twice on wspush's own server (`open_*_now`, then
        the ASGI call), and a JWT's signature is the costly part: the last refusal is
        kept, for the same query string object, so a bad token costs one check.
        """
        query = scope["query_string"]
        last = self._last_refused
        if last is not None and last[0] is query:
            reason = last[1]
        else:
            try:
                return self.access.grant(query)
            except TokenError as exc:
                reason = str(exc)
            self._last_refused = (query, reason)
        counter = "refused_token_expired" if reason == TOKEN_EXPIRED else "refused_bad_token"
        raise Refusal(400, CLOSE_POLICY_VIOLATION, reason, counter)

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

    def _method_not_allowed(self, request: Request) -> Response:
        """405 with `Allow: GET`, as the Go program answers (HEAD and OPTIONS included)."""
        self.stats.refused_method += 1
        self.refusal_log.refused("method", "refused %s %s: 405", request.method, request.url.path)
        return method_not_allowed()

    def _count_refusal(self, refusal: Refusal, scope: Scope) -> None:
        setattr(self.stats, refusal.counter, getattr(self.stats, refusal.counter) + 1)
        client = scope.get("client")
        self.refusal_log.refused(
            refusal.counter,
            "refused %s %s from %s: %d %s",
            scope["type"],
            scope.get("path", "?")[:LOGGED_PATH],
            client[0] if client else "?",
            refusal.status,
            refusal.reason,
            detail=refusal.reason,  # a line for each reason: a bad key is not a bad clock
        )

    @functools.cached_property
    def sse_headers(self) -> list[tuple[bytes, bytes]]:
        """The response headers of an `SSEResponse`, for `DirectSSEResponse` to send too."""
        template = EventSourceResponse(iter(()), ping=0, sep="\n", headers=SSE_HEADERS)
        return list(template.raw_headers)

    def sse_retry_hint(self) -> bytes:
        """`retry:` with jitter, so clients cut by a shutdown don't all return at once."""
        base = self.settings.sse_retry
        return b"retry:%d\n\n" % (base + random.randint(0, base))

    def sse_ending(self, reason: CloseReason) -> bytes:
        """The last bytes of an SSE stream the relay closes for `reason`."""
        return self.sse_retry_hint() if reason.sse is None else reason.sse


class BacklogSender:
    """`on_backlog` for a subscription: makes sure one task is sending what waits in the
    queue, started from `send(*args)` when none is running.

    A connection keeps it for its whole life, so it is one small object rather than a
    closure (a function and a cell per variable it uses).
    """

    __slots__ = ("args", "send", "task")

    def __init__(self, send: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        self.send = send
        self.args = args
        self.task: asyncio.Task[None] | None = None

    def __call__(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self.send(*self.args))

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()


class TaskFreeWebSocket:
    """An accepted WebSocket as `Endpoints.websocket` keeps it, without its task.

    The server puts the connection's receive events here: client messages are dropped
    (one above `--max-client-message` closes with 1009) and the disconnect leaves the
    hub. A backlog goes out through a task that runs only while there is one, and the
    relay's close (a None in the queue) closes with the subscription's close reason.
    """

    __slots__ = ("backlog", "endpoints", "subscription", "writer")

    def __init__(
        self, endpoints: Endpoints, subscription: Subscription, writer: WebSocketDirectWriter
    ) -> None:
        self.endpoints = endpoints
        self.subscription = subscription
        self.writer = writer
        self.backlog = BacklogSender(self._send_backlog)

    def opened(self) -> None:
        self.subscription.write_directly(
            self.writer, self.endpoints.encode_frame, on_backlog=self.backlog
        )

    def put_nowait(self, message: ASGIMessage) -> None:
        if message["type"] == "websocket.disconnect":
            self.backlog.cancel()
            self.endpoints.hub.unsubscribe(self.subscription)
            return
        data = message.get("bytes") or message.get("text") or ""
        limit = self.endpoints.settings.max_client_message
        if len(data) > limit:
            logger.info("closing a WebSocket that sent %d bytes (max %d)", len(data), limit)
            self.writer.close(CLOSE_MESSAGE_TOO_BIG)

    async def _send_backlog(self) -> None:
        await write_backlog(self.subscription, self.writer, self._close)

    async def _close(self) -> None:
        reason = self.subscription.close_reason
        self.writer.close(reason.code, reason.reason)


class SSEResponse(EventSourceResponse):
    """An EventSourceResponse that always leaves the hub, however the stream ends.

    (A generator that never started would not run its `finally`.)
    """

    def __init__(self, endpoints: Endpoints, subscription: Subscription, scope: Scope) -> None:
        super().__init__(
            sse_stream(endpoints, subscription, direct_writer(scope)),
            ping=0,  # heartbeats come through the queue, from one timer for all
            sep="\n",
            headers=SSE_HEADERS,
            # When sse-starlette sees the server exiting, it waits this long for the
            # stream to end by itself: the relay's drain ends it with a retry hint.
            shutdown_grace_period=endpoints.settings.shutdown_timeout,
        )
        self.hub = endpoints.hub
        self.subscription = subscription

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.hub.unsubscribe(self.subscription)


class DirectSSEResponse(Response):
    """An SSE stream on a server with direct writes: what a long-lived stream keeps is
    one coroutine waiting for the client to leave.

    The hub writes events straight to the connection. This response sends the headers
    `SSEResponse` sends, runs a sender task only while a backlog waits (as WebSocket
    does), and ends the stream with a retry hint when the relay closes it. It has none
    of sse-starlette's three tasks per stream: heartbeats come from the relay's timer, a
    shutdown reaches it through the hub's drain, and a disconnect through `receive`.
    On wspush's protocols it needs no task at all: the server sends the head and calls
    `opened` and `disconnected` itself (see `Endpoints.open_sse_now`).
    """

    def __init__(self, endpoints: Endpoints, subscription: Subscription, writer: DirectWriter):
        # Not Response.__init__: there is no body to render, and the headers are shared.
        self.status_code = 200
        self.background = None
        self.raw_headers = endpoints.sse_headers
        self.endpoints = endpoints
        self.subscription = subscription
        self.writer = writer
        self.backlog: BacklogSender | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            headers = self.raw_headers
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            self.opened(send)
            while (await receive())["type"] != "http.disconnect":
                pass
        finally:
            self.disconnected()

    def opened(self, send: Send) -> None:
        """The head is sent: events go straight to the connection from now on, and a
        backlog through `send`."""
        self.backlog = BacklogSender(self._send_backlog, send)
        encode: Encoder = sse_chunk if self.writer.chunked else sse_event
        self.subscription.write_directly(self.writer, encode, on_backlog=self.backlog)

    def disconnected(self) -> None:
        if self.backlog is not None:
            self.backlog.cancel()
        self.endpoints.hub.unsubscribe(self.subscription)

    async def _send_backlog(self, send: Send) -> None:
        """Write what waits in the queue, in order; on the relay's close, end the stream."""
        await write_backlog(self.subscription, self.writer, functools.partial(self._end, send))

    async def _end(self, send: Send) -> None:
        """The close reason's last bytes (the retry hint, or the expiry event) and the end
        of the body, or a cut if the client does not read them within the shutdown
        timeout (as sse-starlette cuts streams at exit)."""
        ending = self.endpoints.sse_ending(self.subscription.close_reason)
        try:
            async with asyncio.timeout(self.endpoints.settings.shutdown_timeout):
                await send({"type": "http.response.body", "body": ending, "more_body": False})
            self.endpoints.hub.unsubscribe(self.subscription)  # the stream is over
        except TimeoutError:
            self.writer.kick(CLOSE_GOING_AWAY)


async def close_websocket(websocket: WebSocket, subscription: Subscription) -> None:
    """Close with the subscription's close reason (1001 when the relay goes away),
    unless the client has gone already."""
    if websocket.application_state is WebSocketState.CONNECTED:
        reason = subscription.close_reason
        with contextlib.suppress(WebSocketDisconnect, OSError, RuntimeError):
            await websocket.close(reason.code, reason.reason)


async def write_backlog(
    subscription: Subscription, writer: DirectWriter, end: Callable[[], Awaitable[None]]
) -> None:
    """Write what waits in a subscription's queue, in order, as the client takes it; on
    the relay's close (None in the queue), `end` the stream."""
    queue = subscription.queue
    try:
        while not queue.empty():
            message = queue.get_nowait()
            subscription.busy = True
            if message is None:
                await end()
                return
            await writer.wait_writable()
            if not writer.is_open():
                return
            subscription.write(message)
            if queue.empty():
                subscription.busy = False
    except OSError:
        return  # the client went away mid-send


async def sse_stream(
    endpoints: Endpoints, subscription: Subscription, writer: DirectWriter | None
) -> AsyncIterator[bytes]:
    """The backlog path of an SSE stream: queued events go out as one body chunk.

    It starts once the response headers are sent; from then on the hub may also write
    events straight to the connection (when the server offers direct writes).
    """
    if writer is not None:
        encode: Encoder = sse_chunk if writer.chunked else sse_event
        subscription.write_directly(writer, encode)
    queue = subscription.queue
    stats = endpoints.stats
    latency = endpoints.hub.latency
    while True:
        chunks: list[bytes] = []
        received: list[float] = []  # arrival times of the messages in this chunk
        message = await queue.get()
        subscription.busy = True
        while True:
            if message is None:
                chunks.append(endpoints.sse_ending(subscription.close_reason))
                yield b"".join(chunks)
                return
            event = counted(stats, message, message.sse)
            if event is not None:
                chunks.append(event)
                if not message.is_heartbeat:
                    received.append(message.received)
            if queue.empty():
                break
            message = queue.get_nowait()
        if chunks:
            body = b"".join(chunks)
            yield body
            stats.bytes_sent += len(body)
            now = time.monotonic()
            for arrival in received:
                latency.observe(now - arrival)
        if queue.empty():
            subscription.busy = False


def sse_event(message: Message) -> bytes | None:
    return message.sse


def sse_chunk(message: Message) -> bytes | None:
    return message.sse_chunk


def direct_writer(scope: Scope) -> DirectWriter | None:
    """The server's direct writer for this connection, if it offers one."""
    extension = (scope.get("extensions") or {}).get(DIRECT_WRITE)
    return None if extension is None else extension["writer"]


def frame_encoder(frame_type: str) -> Encoder:
    """Pre-encoded WebSocket frames for direct writes, by frame type."""

    def binary(message: Message) -> bytes:
        return message.binary_frame

    def text(message: Message) -> bytes | None:
        return message.text_frame

    def auto(message: Message) -> bytes:
        return message.text_frame or message.binary_frame

    encoders: dict[str, Encoder] = {"binary": binary, "text": text, "auto": auto}
    return encoders[frame_type]


def websocket_framer(frame_type: str) -> Frame:
    """The ASGI send event for a message, by frame type; None when it cannot be sent."""

    def binary(message: Message) -> ASGIMessage:
        return {"type": "websocket.send", "bytes": message.payload}

    def text(message: Message) -> ASGIMessage | None:
        data = message.text
        return None if data is None else {"type": "websocket.send", "text": data}

    def auto(message: Message) -> ASGIMessage:
        data = message.text
        if data is None:
            return {"type": "websocket.send", "bytes": message.payload}
        return {"type": "websocket.send", "text": data}

    framers: dict[str, Frame] = {"binary": binary, "text": text, "auto": auto}
    return framers[frame_type]


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


def refusal_response(refusal: Refusal) -> Response:
    """The HTTP answer to a refusal, with the header that tells the client what next."""
    headers = {
        426: {"Upgrade": "websocket"},
        431: {"Connection": "close"},  # the rest of that head is not worth reading
        503: {"Retry-After": str(RETRY_AFTER_SECONDS)},
    }.get(refusal.status)
    return PlainTextResponse(refusal.reason + "\n", refusal.status, headers=headers)


async def deny_websocket(
    websocket: WebSocket, refusal: Refusal, cors: list[tuple[bytes, bytes]]
) -> None:
    """An HTTP status before the upgrade where the server can, else a close code."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        response = refusal_response(refusal)
        response.raw_headers += cors
        await websocket.send_denial_response(response)
    else:
        await websocket.close(refusal.close_code, refusal.reason)


class AnyMethod:
    """Route target that lets every HTTP method reach the endpoint.

    Starlette answers unlisted methods itself with `Allow: GET, HEAD`; the Go program
    (and so wspush) answers 405 with `Allow: GET`, from the endpoint.
    """

    def __init__(self, endpoint: Callable[[Request], Awaitable[Response]]) -> None:
        self.app = request_response(endpoint)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def method_not_allowed() -> Response:
    return PlainTextResponse("method not allowed\n", 405, headers={"Allow": "GET"})
