"""Per-token fan-out: the subscriber hands each message to the hub, the hub to every
connection's bounded queue, and each endpoint drains its own queue.

The hub never waits: a full queue loses the message (counted), so one slow client can
never delay the Redis reader or the other clients.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from enum import StrEnum

from wspush.stats import Stats

logger = logging.getLogger("wspush.hub")

_UNSET: object = object()


class Transport(StrEnum):
    WEBSOCKET = "ws"
    SSE = "sse"


class Message:
    """One published payload, shared by every connection that receives it.

    Its SSE and text forms are computed on first use and cached, so a message
    fanned out to a thousand SSE clients is encoded once.
    """

    __slots__ = ("_sse", "_text", "is_heartbeat", "payload", "token")

    def __init__(self, token: bytes, payload: bytes) -> None:
        self.token = token
        self.payload = payload
        self.is_heartbeat = False
        self._text: object = _UNSET
        self._sse: object = _UNSET

    @classmethod
    def heartbeat(cls, payload: bytes) -> Message:
        """A heartbeat: `ping:` for SSE with no payload (EventSource ignores the field)."""
        beat = cls(b"", payload)
        beat.is_heartbeat = True
        if not payload:
            beat._sse = b"ping:\n\n"
        return beat

    @property
    def text(self) -> str | None:
        """The payload as text, or None when it is not valid UTF-8."""
        if self._text is _UNSET:
            try:
                self._text = self.payload.decode()
            except UnicodeDecodeError:
                self._text = None
                logger.warning(
                    "message of %d bytes for token %r is not valid UTF-8: "
                    "not sent to SSE or text-frame clients",
                    len(self.payload),
                    self.token,
                )
        return self._text  # type: ignore[return-value]

    @property
    def sse(self) -> bytes | None:
        """The SSE event bytes, or None when the message has no SSE form."""
        if self._sse is _UNSET:
            self._sse = encode_sse(self.payload) if self.payload and self.text is not None else None
        return self._sse  # type: ignore[return-value]


def encode_sse(payload: bytes) -> bytes:
    """Frame a message as the Go wspush does: one `data:` line per line, then a blank line.

    A line starting with a space gets `data: ` instead of `data:`: EventSource strips one
    leading space, so Go's form would lose it.
    """
    lines = payload.split(b"\n")
    return (
        b"".join(
            [
                b"data: " + line + b"\n" if line[:1] == b" " else b"data:" + line + b"\n"
                for line in lines
            ]
        )
        + b"\n"
    )


class TokenFull(Exception):
    """The token already has the maximum number of connections."""


class Draining(Exception):
    """The relay is shutting down and takes no new connections."""


class Subscription:
    """One connection's place in the hub: its token and its bounded queue.

    The queue holds `Message`s; `None` in it tells the endpoint to close.
    """

    __slots__ = ("closing", "dropped", "queue", "token", "transport")

    def __init__(self, token: bytes, transport: Transport, queue_size: int) -> None:
        self.token = token
        self.transport = transport
        self.queue: asyncio.Queue[Message | None] = asyncio.Queue(queue_size)
        self.dropped = 0
        self.closing = False

    def close(self) -> None:
        """Ask the endpoint to close, making room in a full queue if needed."""
        if self.closing:
            return
        self.closing = True
        if self.queue.full():
            self.queue.get_nowait()
        self.queue.put_nowait(None)


class Hub:
    """Token -> subscriptions, with the per-token connection limit."""

    def __init__(self, max_per_token: int, queue_size: int, stats: Stats) -> None:
        self.max_per_token = max_per_token
        self.queue_size = queue_size
        self.stats = stats
        self.draining = False
        self.drained = asyncio.Event()  # set once draining and the last connection left
        self._by_token: dict[bytes, list[Subscription]] = {}

    def __len__(self) -> int:
        return self.stats.connections_open

    def tokens(self) -> int:
        return len(self._by_token)

    def subscriptions(self) -> Iterator[Subscription]:
        for subscriptions in list(self._by_token.values()):
            yield from subscriptions

    def subscribe(self, token: bytes, transport: Transport) -> Subscription:
        if self.draining:
            raise Draining
        subscriptions = self._by_token.setdefault(token, [])
        if len(subscriptions) >= self.max_per_token:
            raise TokenFull
        subscription = Subscription(token, transport, self.queue_size)
        subscriptions.append(subscription)
        self.stats.connections_open += 1
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Forget a connection; safe to call more than once."""
        subscriptions = self._by_token.get(subscription.token)
        if subscriptions is None or subscription not in subscriptions:
            return
        subscriptions.remove(subscription)
        self.stats.connections_open -= 1
        if not subscriptions:
            del self._by_token[subscription.token]
            if self.draining and not self._by_token:
                self.drained.set()

    def publish(self, token: bytes, payload: bytes) -> None:
        """Queue a message for every connection of `token`; never blocks."""
        subscriptions = self._by_token.get(token)
        if subscriptions is None:
            return
        message = Message(token, payload)
        for subscription in subscriptions:
            queue = subscription.queue
            if queue.full():
                subscription.dropped += 1
                self.stats.dropped_queue_full += 1
            else:
                queue.put_nowait(message)

    def send_heartbeat(self, sse_beat: Message, ws_beat: Message | None) -> None:
        """Queue a heartbeat on every idle-enough connection (a full queue needs none)."""
        for subscription in self.subscriptions():
            beat = sse_beat if subscription.transport is Transport.SSE else ws_beat
            if beat is not None and not subscription.queue.full():
                subscription.queue.put_nowait(beat)
                self.stats.heartbeats_sent += 1

    async def run_heartbeats(self, interval: float, payload: bytes) -> None:
        """Every `interval` seconds, a heartbeat for all connections.

        WebSocket connections get one only when there is a payload; otherwise the
        server's protocol-level pings keep them alive (ASGI cannot send a ping).
        """
        sse_beat = Message.heartbeat(payload)
        ws_beat = Message.heartbeat(payload) if payload else None
        while True:
            await asyncio.sleep(interval)
            self.send_heartbeat(sse_beat, ws_beat)

    def close_all(self) -> None:
        """Stop taking connections and ask every open one to close."""
        self.draining = True
        if not self._by_token:
            self.drained.set()
        for subscription in self.subscriptions():
            subscription.close()
