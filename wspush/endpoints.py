"""The client side: `/ping`, `/ready`, Server-Sent Events and WebSocket endpoints.

Every stream is admitted by `wspush.admission` and then attached to the hub as a `Sink`:
`WebSocketStream` or `SSEStream`, each over the server's direct writer where it offers
one, else over ASGI `send`. The hub's one drain sends each its backlog. Refusals get a
precise status: 400 for a bad token, 429 when the token has its maximum of connections,
503 while shutting down, 426 for a plain GET on a WebSocket path, 405 for any method but
GET, 431 for a request head over `--max-request-head`; each with the CORS header,
WebSocket refusals before the upgrade included.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import Awaitable, Callable
from operator import attrgetter
from typing import Any

from prometheus_client import CollectorRegistry
from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import request_response
from starlette.types import Message as ASGIMessage
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from wspush.admission import Admission, Refusal, is_sse_request, request_head_refusal
from wspush.contract import (
    CLOSE_GOING_AWAY,
    CLOSE_MESSAGE_TOO_BIG,
    KICK_GRACE,
    CloseReason,
    DirectWriter,
    WebSocketWriter,
    direct_writer,
)
from wspush.cors import cors_headers_for
from wspush.hub import Encoder, Hub, Message, Subscription, Transport
from wspush.logs import ON_PURPOSE, RefusalLog
from wspush.metrics import metrics_endpoint
from wspush.resume import Resumer
from wspush.settings import Settings
from wspush.stats import Stats
from wspush.subscriber import RedisSubscriber
from wspush.tokens import query_parameter
from wspush.wire import OPCODE_BINARY, OPCODE_TEXT, websocket_frame, websocket_frame_size

logger = logging.getLogger("wspush.endpoints")

RETRY_AFTER_SECONDS = 5
# The WebSocket subprotocol whose frames carry message ids and resume signals.
META_PROTOCOL = "wspush.v1"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

# Errors that mean the client went away while the endpoint was talking to it.
GONE = (WebSocketDisconnect, OSError, RuntimeError)


class Endpoints:
    """The routes of one relay, bound to its settings, hub and counters."""

    def __init__(
        self,
        settings: Settings,
        hub: Hub,
        subscriber: RedisSubscriber,
        stats: Stats,
        metrics: CollectorRegistry,
        resumer: Resumer | None = None,
    ) -> None:
        self.settings = settings
        self.resumer = resumer  # with --history-size: resume after reconnect
        self.serve_metrics = metrics_endpoint(metrics)
        self.refusal_log = RefusalLog()
        self.admission = Admission(settings, hub, stats, self.refusal_log)
        self.hub = hub
        self.subscriber = subscriber
        self.stats = stats
        self.frame_encoder = frame_encoder(settings.ws_frame)
        self.payload_encoder = payload_encoder(settings.ws_frame)
        self.meta_frame_encoder = meta_frame_encoder(settings.ws_frame)
        self.meta_payload_encoder = meta_payload_encoder(settings.ws_frame)
        self.asgi_frame = asgi_framer(settings.ws_frame)
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

    # -- Server-Sent Events -------------------------------------------------------------

    async def http(self, request: Request) -> Response:
        """Any other HTTP request: an SSE stream, or a refusal."""
        if request.method != "GET":
            return self._method_not_allowed(request)
        try:
            subscription = self.admission.admit(request.scope, Transport.SSE)
        except Refusal as refusal:
            return refusal_response(refusal)
        self._start_resume(subscription, request.scope, signals=True)
        try:
            await self.subscriber.wait_subscribed(subscription.token)
        except BaseException:
            self.hub.unsubscribe(subscription)
            raise
        return SSEStream(self, subscription, direct_writer(request.scope))

    def open_sse_now(self, scope: Scope, writer: DirectWriter) -> SSEStream | None:
        """`http` for an SSE stream it would open at once, on a server that keeps it
        without a task (see `wspush.engine`): the response, subscribed; the server sends
        its head, then calls `opened`, and `disconnected` when the client leaves.

        None for everything else, and the server calls `http` as usual: a refusal (whose
        verdict `http` finds in the scope), a method other than GET, or exact mode's
        wait for Redis to confirm the channel.
        """
        if scope["method"] != "GET" or self.subscriber.confirms_subscriptions():
            return None
        try:
            subscription = self.admission.admit(scope, Transport.SSE)
        except Refusal:
            return None
        self._start_resume(subscription, scope, signals=True)
        return SSEStream(self, subscription, writer)

    # -- WebSocket ----------------------------------------------------------------------

    async def websocket(self, websocket: WebSocket) -> None:
        try:
            subscription = self.admission.admit(websocket.scope, Transport.WEBSOCKET)
        except Refusal as refusal:
            await deny_websocket(websocket, refusal, self.cors_headers(websocket.scope))
            return
        meta = META_PROTOCOL in websocket.scope.get("subprotocols", ())
        self._start_resume(subscription, websocket.scope, signals=meta)
        try:
            await self.subscriber.wait_subscribed(subscription.token)  # exact mode
            await websocket.accept(META_PROTOCOL if meta else None)
            # Pre-encoded frames are uncompressed: with compression on, frames go through
            # the server, which compresses each one for its connection.
            writer = None if self.settings.ws_compression else direct_writer(websocket.scope)
            stream = WebSocketStream(self, subscription, writer, websocket)  # type: ignore[arg-type]
            stream.opened(meta)
            await stream.discard_client_frames()
        except GONE:
            pass  # the client went away; nothing to tell it
        finally:
            self.hub.unsubscribe(subscription)

    def open_websocket_now(self, scope: Scope, writer: WebSocketWriter) -> WebSocketStream | None:
        """`websocket` for a connection it would accept at once, on a server that keeps
        it without a task (see `wspush.engine`): the endpoint, subscribed.

        None for everything else, and the server calls `websocket` as usual: a refusal
        (which that answers from the verdict in the scope), compression (frames go
        through the server), or exact mode's wait for Redis to confirm the channel.
        """
        if self.settings.ws_compression or self.subscriber.confirms_subscriptions():
            return None
        try:
            subscription = self.admission.admit(scope, Transport.WEBSOCKET)
        except Refusal:
            return None
        self._start_resume(subscription, scope, signals=False)
        return WebSocketStream(self, subscription, writer)

    # -- shared -------------------------------------------------------------------------

    def _start_resume(self, subscription: Subscription, scope: Scope, signals: bool) -> None:
        """With history, bring the connection in sequence from the position it claims
        (see `wspush.resume`); `signals`: its framing carries positions and resets."""
        resumer = self.resumer
        if resumer is not None:
            resumer.start(subscription, claimed_position(scope), signals)

    def refuse_request_head(self, scope: Scope) -> Response:
        """The answer to a request head over `--max-request-head`, counted and logged, for
        a server that stops reading it (wspush's HTTP protocol): the scope has the
        headers read so far, enough for the CORS decision."""
        refusal = request_head_refusal(self.settings.max_request_head)
        self.admission.refused(refusal, scope)
        response = refusal_response(refusal)
        response.raw_headers += self.cors_headers(scope)
        return response

    def too_big(self, message: ASGIMessage) -> bool:
        """A client message over --max-client-message (logged): the connection gets 1009."""
        data = message.get("bytes") or message.get("text") or ""
        limit = self.settings.max_client_message
        if len(data) <= limit:
            return False
        logger.info("closing a WebSocket that sent %d bytes (max %d)", len(data), limit)
        return True

    def _method_not_allowed(self, request: Request) -> Response:
        """405 with `Allow: GET`, as the Go program answers (HEAD and OPTIONS included)."""
        self.stats.refused_method += 1
        self.refusal_log.refused("method", "refused %s %s: 405", request.method, request.url.path)
        return method_not_allowed()

    @functools.cached_property
    def sse_headers(self) -> list[tuple[bytes, bytes]]:
        """The response headers of an SSE stream: sse-starlette's, with the relay's."""
        template = EventSourceResponse(iter(()), ping=0, sep="\n", headers=SSE_HEADERS)
        return list(template.raw_headers)

    def sse_retry_hint(self) -> bytes:
        """`retry:` with jitter, so clients cut by a shutdown don't all return at once."""
        base = self.settings.sse_retry
        return b"retry:%d\n\n" % (base + random.randint(0, base))


class WebSocketStream:
    """An accepted WebSocket: its sink in the hub, and what it does with client frames
    (drops them; one above `--max-client-message` closes with 1009).

    On wspush's engine it needs no task: the server puts the connection's receive events
    here (`put_nowait`) and calls `opened` after the 101. Anywhere else it lives inside
    `Endpoints.websocket`, which reads client frames with `discard_client_frames`; without
    a direct writer it sends through the ASGI `websocket`.
    """

    __slots__ = ("cut", "cut_code", "endpoints", "subscription", "task", "websocket", "writer")

    def __init__(
        self,
        endpoints: Endpoints,
        subscription: Subscription,
        writer: WebSocketWriter | None,
        websocket: WebSocket | None = None,
    ) -> None:
        self.endpoints = endpoints
        self.subscription = subscription
        self.writer = writer
        self.websocket = websocket
        # The endpoint's task, for `kick` over plain ASGI (which has no other way out).
        self.task = None if writer is not None else asyncio.current_task()
        self.cut = False
        self.cut_code = CLOSE_GOING_AWAY

    def opened(self, meta: bool = False) -> None:
        """The 101 is sent; `meta`: in the wspush.v1 framing (ids and resume signals)."""
        endpoints = self.endpoints
        if meta:
            encoders = endpoints.meta_payload_encoder, endpoints.meta_frame_encoder
        else:
            encoders = endpoints.payload_encoder, endpoints.frame_encoder
        self.subscription.attach(self, encoders[0] if self.writer is None else encoders[1])

    # -- client frames --

    def put_nowait(self, message: ASGIMessage) -> None:
        """A receive event from a server that keeps the connection without a task."""
        if message["type"] == "websocket.disconnect":
            self.endpoints.hub.unsubscribe(self.subscription)
        elif self.endpoints.too_big(message):
            self.writer.close(CLOSE_MESSAGE_TOO_BIG)  # type: ignore[union-attr]

    async def discard_client_frames(self) -> None:
        """Read what the client sends and drop it, so a close is noticed at once."""
        websocket: WebSocket = self.websocket  # type: ignore[assignment]
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                if self.endpoints.too_big(message):
                    await websocket.close(CLOSE_MESSAGE_TOO_BIG)
                    return
        except asyncio.CancelledError:
            if not self.cut:
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            # Kicked (plain ASGI): say why if the client still takes it, then leave.
            with contextlib.suppress(TimeoutError, *GONE):
                async with asyncio.timeout(KICK_GRACE):
                    await websocket.close(self.cut_code)
        except GONE:
            return

    # -- the sink --

    async def send(self, items: list[bytes]) -> int:
        writer = self.writer
        if writer is not None:
            data = items[0] if len(items) == 1 else b"".join(items)
            await writer.wait_writable()
            if writer.is_open():
                writer.write(data)
            return len(data)
        websocket: WebSocket = self.websocket  # type: ignore[assignment]
        frame = self.endpoints.asgi_frame
        sent = 0
        try:
            for item in items:
                await websocket.send(frame(item))
                sent += websocket_frame_size(len(item))
        except GONE as exc:
            raise OSError("the client went away") from exc
        return sent

    async def end(self, reason: CloseReason) -> None:
        if self.writer is not None:
            self.writer.close(reason.code, reason.reason)
            return
        websocket: WebSocket = self.websocket  # type: ignore[assignment]
        if websocket.application_state is WebSocketState.CONNECTED:
            with contextlib.suppress(*GONE):
                await websocket.close(reason.code, reason.reason)

    def kick(self, code: int) -> None:
        if self.writer is not None:
            self.writer.kick(code)
        elif self.task is not None and not self.cut:
            self.cut = True
            self.cut_code = code
            self.task.cancel()


class SSEStream(Response):
    """An SSE stream: the response, and its sink in the hub.

    It sends the headers sse-starlette's `EventSourceResponse` sends, and what is left is
    one coroutine waiting for the client to leave. Events go out through the server's
    direct writer where it offers one, else as ASGI body messages; heartbeats come from
    the relay's timer and a shutdown through the hub's drain, which ends the stream with
    a retry hint. On wspush's engine it needs no task: the server sends the head and
    calls `opened` and `disconnected` itself (see `Endpoints.open_sse_now`).
    """

    def __init__(
        self, endpoints: Endpoints, subscription: Subscription, writer: DirectWriter | None
    ) -> None:
        # Not Response.__init__: there is no body to render, and the headers are shared.
        self.status_code = 200
        self.background = None
        self.raw_headers = endpoints.sse_headers
        self.endpoints = endpoints
        self.subscription = subscription
        self.writer = writer
        self.asgi_send: Send | None = None
        self.task: asyncio.Task[Any] | None = None  # for `kick` over plain ASGI
        self.cut = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.task = asyncio.current_task()
        try:
            headers = self.raw_headers
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            self.opened(send)
            while (await receive())["type"] != "http.disconnect":
                pass
        except asyncio.CancelledError:
            if not self.cut:
                raise
            # Kicked (plain ASGI): the server closes a response left incomplete.
            self.task.uncancel()  # type: ignore[union-attr]
            ON_PURPOSE.set(True)
        finally:
            self.disconnected()

    def opened(self, send: Send) -> None:
        """The head is sent: events may go out from now on, and the end through `send`."""
        self.asgi_send = send
        chunked = self.writer is not None and self.writer.chunked
        self.subscription.attach(self, sse_chunk if chunked else sse_event)

    def disconnected(self) -> None:
        self.endpoints.hub.unsubscribe(self.subscription)

    # -- the sink --

    async def send(self, items: list[bytes]) -> int:
        body = items[0] if len(items) == 1 else b"".join(items)
        writer = self.writer
        if writer is not None:
            await writer.wait_writable()
            if writer.is_open():
                writer.write(body)
            return len(body)
        await self.asgi_send({"type": "http.response.body", "body": body, "more_body": True})  # type: ignore[misc]
        return len(body)

    async def end(self, reason: CloseReason) -> None:
        """The reason's last bytes (the retry hint, unless it says otherwise) and the end
        of the body, or a cut if the client does not read them within the shutdown
        timeout (as sse-starlette cuts streams at exit)."""
        tail = self.endpoints.sse_retry_hint() if reason.sse is None else reason.sse
        try:
            async with asyncio.timeout(self.endpoints.settings.shutdown_timeout):
                await self.asgi_send(
                    {"type": "http.response.body", "body": tail, "more_body": False}
                )  # type: ignore[misc]
            self.endpoints.hub.unsubscribe(self.subscription)  # the stream is over
        except TimeoutError:
            self.kick(CLOSE_GOING_AWAY)

    def kick(self, code: int) -> None:
        if self.writer is not None:
            self.writer.kick(code)
        elif self.task is not None and not self.cut:
            self.cut = True
            self.task.cancel()


# The encoders of the hot path read a cached property of the message; attrgetter does
# that from C, without a Python frame per delivery.
sse_event: Encoder = attrgetter("sse")
sse_chunk: Encoder = attrgetter("sse_chunk")


def frame_encoder(frame_type: str) -> Encoder:
    """Pre-encoded WebSocket frames for direct writes, by frame type."""
    binary: Encoder = attrgetter("binary_frame")
    text: Encoder = attrgetter("text_frame")

    def auto(message: Message) -> bytes:
        return message.text_frame or message.binary_frame

    encoders: dict[str, Encoder] = {"binary": binary, "text": text, "auto": auto}
    return encoders[frame_type]


def meta_frame_encoder(frame_type: str) -> Encoder:
    """Frames in the wspush.v1 framing for direct writes, by frame type: text frames
    only for UTF-8 messages, as without it."""

    def binary(message: Message) -> bytes:
        return websocket_frame(OPCODE_BINARY, message.meta)

    def text(message: Message) -> bytes | None:
        return websocket_frame(OPCODE_TEXT, message.meta) if message.is_text else None

    def auto(message: Message) -> bytes:
        opcode = OPCODE_TEXT if message.is_text else OPCODE_BINARY
        return websocket_frame(opcode, message.meta)

    encoders: dict[str, Encoder] = {"binary": binary, "text": text, "auto": auto}
    return encoders[frame_type]


def meta_payload_encoder(frame_type: str) -> Encoder:
    """`payload_encoder` in the wspush.v1 framing."""

    def meta(message: Message) -> bytes:
        return message.meta

    def text(message: Message) -> bytes | None:
        return message.meta if message.is_text else None

    return text if frame_type == "text" else meta


def claimed_position(scope: Scope) -> bytes | None:
    """The position a client resumes from: its `Last-Event-ID` header (what EventSource
    sends on reconnect), else `?last_event_id=`; None when it names none."""
    for name, value in scope["headers"]:
        if name == b"last-event-id":
            return value.strip() or None
    return query_parameter(scope["query_string"], b"last_event_id") or None


def payload_encoder(frame_type: str) -> Encoder:
    """What a WebSocket over plain ASGI sends of a message: the payload, or None when
    the frame type cannot carry it (text frames need UTF-8)."""

    def payload(message: Message) -> bytes:
        return message.payload

    def text(message: Message) -> bytes | None:
        return message.payload if message.is_text else None

    return text if frame_type == "text" else payload


def asgi_framer(frame_type: str) -> Callable[[bytes], ASGIMessage]:
    """The ASGI send event for a payload `payload_encoder` gave, by frame type."""

    def binary(data: bytes) -> ASGIMessage:
        return {"type": "websocket.send", "bytes": data}

    def text(data: bytes) -> ASGIMessage:
        return {"type": "websocket.send", "text": data.decode()}

    def auto(data: bytes) -> ASGIMessage:
        try:
            return {"type": "websocket.send", "text": data.decode()}
        except UnicodeDecodeError:
            return {"type": "websocket.send", "bytes": data}

    framers = {"binary": binary, "text": text, "auto": auto}
    return framers[frame_type]


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
    """An HTTP status before the upgrade where the server can (with the CORS header, as
    every HTTP answer has), else a close code."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        response = refusal_response(refusal)
        response.raw_headers += cors
        await websocket.send_denial_response(response)
        ON_PURPOSE.set(True)  # see `wspush.logs.OnPurposeFilter`
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
