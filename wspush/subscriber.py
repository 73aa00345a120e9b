"""The Redis side: one subscriber connection per app (per shard on a cluster), kept
alive forever.

In `pattern` mode (the default, as the Go program does) it is one `PSUBSCRIBE
<prefix>*`, which receives every message under the prefix. In `exact` mode it
subscribes the channels of the tokens that have local clients (see wspush/interest.py),
with SUBSCRIBE, or SSUBSCRIBE for sharded pub/sub on a cluster (wspush/cluster.py).

redis-py gives up after its own retries, so this loop owns reconnection: every failure
tears the connection down, waits so attempts are at most one per `retry_interval`
(as the Go program does), and subscribes again. Clients stay connected meanwhile and
receive again as soon as the subscription is back. Channels and payloads stay bytes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from operator import itemgetter
from time import monotonic
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot

from wspush.hub import Hub
from wspush.intake import FloodGate, ReplyIntake
from wspush.interest import Interest, Link
from wspush.sentinel import redis_from_url
from wspush.settings import redact_url
from wspush.stats import Stats
from wspush.tokens import MAX_TOKEN_BYTES

logger = logging.getLogger("wspush.redis")

CONNECT_TIMEOUT = 5.0
PROBE_MARK = b"wspush-probe-"
READ_TIMEOUT = 1.0
# How long changes of the desired set are collected into one (UN)SUBSCRIBE: a busy
# server sends one command per window, not one per connection.
BATCH_WINDOW = 0.002
CHANNELS_PER_COMMAND = 1000
# How long a new connection waits for Redis to confirm its token's channel (exact mode).
CONFIRM_TIMEOUT = 5.0


@dataclass(frozen=True)
class Commands:
    """The commands and reply kinds of one flavour of channel subscription."""

    subscribe: bytes
    unsubscribe: bytes
    message: bytes
    subscribed: bytes
    unsubscribed: bytes
    per_slot: bool  # one command per hash slot (a cluster refuses CROSSSLOT batches)


PATTERN = Commands(b"PSUBSCRIBE", b"PUNSUBSCRIBE", b"pmessage", b"psubscribe", b"", False)
EXACT = Commands(b"SUBSCRIBE", b"UNSUBSCRIBE", b"message", b"subscribe", b"unsubscribe", False)
SHARDED = Commands(
    b"SSUBSCRIBE", b"SUNSUBSCRIBE", b"smessage", b"ssubscribe", b"sunsubscribe", True
)


class RedisSubscriber(Protocol):
    """What the endpoints and the relay need from the Redis side, single node or cluster."""

    @property
    def live(self) -> bool: ...

    async def run(self) -> None: ...

    def confirms_subscriptions(self) -> bool:
        """Whether `wait_subscribed` may have to wait (exact mode)."""

    async def wait_subscribed(self, token: bytes) -> None: ...


def connect(url: str, tls_verify: bool, **options: Any) -> aioredis.Redis:
    """A client for one server that never retries by itself (the callers own retries)."""
    if url.startswith("unix:"):
        options.pop("socket_keepalive", None)
    return redis_from_url(
        url,
        tls_verify=tls_verify,
        socket_connect_timeout=CONNECT_TIMEOUT,
        **options,
        retry=Retry(NoBackoff(), 0),
        protocol=2,  # messages as plain replies (RESP3 would route them to a handler)
        client_name="wspush",
    )


def pattern_for(prefix: bytes) -> bytes:
    """`<prefix>*`, with glob characters of the prefix escaped so it matches literally."""
    return re.sub(rb"([*?\[\]\\])", rb"\\\1", prefix) + b"*"


class Subscriber:
    """Reads messages from one Redis connection and hands them to the hub.

    `commands` chooses the flavour: PATTERN, or EXACT / SHARDED with an `interest` whose
    channels it keeps subscribed (only those its node `owns`, on a cluster).
    """

    def __init__(
        self,
        url: str,
        prefix: bytes,
        hub: Hub,
        stats: Stats,
        *,
        retry_interval: float = 1.0,
        health_interval: float = 15.0,
        tls_verify: bool = True,
        max_message_size: int = 8 * 1024 * 1024,
        commands: Commands = PATTERN,
        interest: Interest | None = None,
        owns: Callable[[bytes], bool] | None = None,
        probe_token: bytes = b"",
        pick_url: Callable[[], str] | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.url = url
        self.commands = commands
        self.interest = interest
        self.owns = owns
        self.pick_url = pick_url  # chooses the server of each attempt (cluster nodes)
        self.on_change = on_change  # up, down, or a channel dropped by Redis
        self.link: Link | None = None  # this connection's subscriptions, while live
        self.max_message_size = max_message_size
        self.tls_verify = tls_verify
        self.health_interval = health_interval
        # A channel under the prefix whose token is too long for any client: the
        # watchdog publishes here and expects to read it back on the subscription.
        self.probe_channel = prefix + PROBE_MARK + probe_token + uuid.uuid4().hex.encode() * 2
        self.probe_seen = False
        self.prefix = prefix
        self.hub = hub
        self.stats = stats
        self.retry_interval = retry_interval
        self.live = False
        self.replies = 0  # replies read on the subscription, for the watchdog
        self._failing = False  # log once per state change, not once per retry

    async def run(self) -> None:
        """Subscribe, relay, and on any failure start again; returns only when cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._went_down(exc)
            await asyncio.sleep(max(0.0, self.retry_interval - (loop.time() - started)))

    def confirms_subscriptions(self) -> bool:
        """Whether `wait_subscribed` may have to wait (exact mode, Redis up)."""
        return self.interest is not None and self.live

    async def wait_subscribed(self, token: bytes) -> None:
        """In exact mode, wait until Redis confirms the channel of `token` (up to
        CONFIRM_TIMEOUT), so that a connection reported open misses no message.

        While Redis is down there is nothing to wait for: the client connects, and
        receives once the subscription is back, as in pattern mode.
        """
        if self.interest is not None and self.live:
            await confirm(self.interest, token)

    async def _session(self) -> None:
        if self.pick_url is not None:
            self.url = self.pick_url()
        client = connect(self.url, self.tls_verify, socket_keepalive=True)
        pubsub = client.pubsub()
        try:
            if self.interest is None:
                await pubsub.psubscribe(pattern_for(self.prefix))
            else:
                await pubsub.execute_command(self.commands.subscribe, self.probe_channel)
            await self._await_confirmation(pubsub)
            if self.interest is not None:
                self.link = Link(self.interest, self.owns)
            self._came_up()
            await self._relay(pubsub, client, self.link)
        finally:
            self.link = None
            self._mark_down()
            await asyncio.shield(self._close(client, pubsub))

    async def _await_confirmation(self, pubsub: Any) -> None:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            while True:
                message = await pubsub.get_message(timeout=READ_TIMEOUT)
                if message is not None and message["type"] == self.commands.subscribed.decode():
                    return

    async def _relay(self, pubsub: Any, client: aioredis.Redis, link: Link | None) -> None:
        """Relay until the connection ends: every reply to the `_handler`, with the
        watchdog (and in exact mode the flusher) beside it.

        It reads the connection directly, with no timeout per read (redis-py's
        get_message() builds a dict and arms a timer for every message); the watchdog
        notices a connection that has gone silent. In exact mode the flusher sends the
        link's batches on the same connection, and Redis answers them in order, between
        messages.
        """
        connection = pubsub.connection
        handle = self._handler(link)
        helpers = [asyncio.create_task(self._watch(pubsub, client), name="wspush-redis-watchdog")]
        if link is not None:
            flusher = self._flush(link, connection)
            helpers.append(asyncio.create_task(flusher, name="wspush-redis-subscriptions"))
        try:
            if ReplyIntake.usable(connection):
                await self._relay_reads(connection, handle)
            else:  # no hiredis: one reply at a time, through redis-py
                read = connection.read_response
                while True:
                    handle([await read(timeout=math.inf)])
        finally:
            for helper in helpers:
                helper.cancel()

    async def _relay_reads(self, connection: Any, handle: Callable[[list[Any]], None]) -> None:
        """Every socket read's replies to `handle`, in the event loop's read callback,
        less what the flood gate sheds while the relay is behind Redis."""
        gate = FloodGate()

        def handle_read(responses: list[Any]) -> None:
            first = gate.first_to_deliver(len(responses), intake.behind)
            if first:  # behind Redis: the oldest go, counted
                responses = [*self._shed(responses[:first], self.at), *responses[first:]]
            handle(responses)

        intake = ReplyIntake(connection, handle_read)
        intake.start()
        try:
            await intake.closed()
        finally:
            intake.stop()

    @property
    def at(self) -> int:
        """Where a message's channel is in its reply: pmessage has the pattern first."""
        return 2 if self.commands is PATTERN else 1

    def _handler(self, link: Link | None) -> Callable[[list[Any]], None]:
        """The hot loop, for the replies of one read: one message -> one hub.publish; in
        exact mode, also the confirmations of the link's (UN)SUBSCRIBE commands."""
        cut = len(self.prefix)
        publish = self.hub.publish
        stats = self.stats
        probe = self.probe_channel
        probes = self.prefix + PROBE_MARK
        longest = len(self.prefix) + MAX_TOKEN_BYTES  # a longer channel has no clients
        too_large = self.max_message_size
        commands = self.commands
        message, subscribed, unsubscribed = commands.message, commands.subscribed, b""
        if link is not None:
            unsubscribed = commands.unsubscribed
        at = self.at
        batch = self.hub.batch

        def handle(responses: list[Any]) -> None:
            self.replies += len(responses)
            received = monotonic()  # for every message of this read
            batch.hold()  # the read's writes go out when it is handled, below
            try:
                deliver(responses, received)
            finally:
                batch.flush()

        def deliver(responses: list[Any], received: float) -> None:
            for response in responses:
                kind = response[0]
                if kind == message:
                    channel = response[at]
                    if len(channel) > longest and channel.startswith(probes):
                        # A health probe: ours, or another relay's on the same Redis.
                        self.probe_seen = self.probe_seen or channel == probe
                        continue
                    stats.messages_seen += 1
                    data = response[at + 1]
                    if len(data) > too_large:
                        self._drop_too_large(channel, len(data))
                    else:
                        publish(channel[cut:], data, received)
                elif link is not None and kind in (subscribed, unsubscribed):
                    channel = response[1]
                    if channel != probe and not link.replied(channel[cut:], kind == subscribed):
                        self._dropped_by_redis(channel)

        return handle

    def _shed(self, responses: list[Any], at: int) -> list[Any]:
        """Drop these messages unread, counting them per token (one lost delivery per
        connection), at C speed: counted by channel, not looked at one by one.

        Returns the replies among them that are not messages, to be handled as usual.
        """
        message = self.commands.message
        others: list[Any] = []
        if set(map(itemgetter(0), responses)) != {message}:
            others = [response for response in responses if response[0] != message]
            responses = [response for response in responses if response[0] == message]
        self.replies += len(responses)
        cut, probes = len(self.prefix), self.prefix + PROBE_MARK
        for channel, count in Counter(map(itemgetter(at), responses)).items():
            if channel.startswith(probes):
                self.probe_seen = self.probe_seen or channel == self.probe_channel
                continue
            self.stats.messages_seen += count
            self.hub.shed(channel[cut:], count)
        return others

    async def _flush(self, link: Link, connection: Any) -> None:
        """Send the link's changes, batched: all (UN)SUBSCRIBEs of a window in one write."""
        try:
            while True:
                await link.wake.wait()
                await asyncio.sleep(BATCH_WINDOW)
                subscribe, unsubscribe = link.plan()
                batch = [
                    *self._commands(self.commands.subscribe, subscribe),
                    *self._commands(self.commands.unsubscribe, unsubscribe),
                ]
                if not batch:
                    continue
                if not connection.is_connected:  # never let redis-py reconnect it here
                    raise ConnectionError("connection closed")
                await connection.send_packed_command(
                    connection.pack_commands(batch), check_health=False
                )
        except Exception as exc:  # the session ends with the connection
            logger.warning("redis: could not send subscriptions: %s", exc)
            await connection.disconnect(nowait=True)

    def _commands(self, command: bytes, tokens: list[bytes]) -> Iterator[tuple[bytes, ...]]:
        """(UN)SUBSCRIBE commands for the channels of `tokens`: as few as the server
        allows (sharded ones need one per hash slot), each at most CHANNELS_PER_COMMAND."""
        channels = [self.prefix + token for token in tokens]
        groups: list[list[bytes]] = [channels]
        if self.commands.per_slot:
            by_slot: dict[int, list[bytes]] = defaultdict(list)
            for channel in channels:
                by_slot[key_slot(channel)].append(channel)
            groups = list(by_slot.values())
        for group in groups:
            for start in range(0, len(group), CHANNELS_PER_COMMAND):
                yield (command, *group[start : start + CHANNELS_PER_COMMAND])

    def _dropped_by_redis(self, channel: bytes) -> None:
        """Redis unsubscribed a channel by itself: its cluster slot moved elsewhere."""
        logger.info("redis: %s unsubscribed %r by itself (slot moved?)", self.url, channel)
        if self.on_change is not None:
            self.on_change()

    async def _watch(self, pubsub: Any, client: aioredis.Redis) -> None:
        """Every interval, PING the subscription and publish a probe to our own channel.

        No reply at all means the connection is dead (half-open through a NAT or proxy,
        or the server is stuck); a missing probe means the subscription is gone even
        though the connection answers. Either way, drop the connection: the session
        ends and `run()` subscribes again.
        """
        interval = self.health_interval
        while True:
            seen = self.replies
            self.probe_seen = False
            try:
                await pubsub.ping()
                publish = client.spublish if self.commands.per_slot else client.publish
                await asyncio.wait_for(publish(self.probe_channel, b"probe"), interval)
                await asyncio.sleep(interval)
            except Exception as exc:  # any failure here means unhealthy
                reason = f"health check failed: {type(exc).__name__}"
            else:
                if self.replies != seen and self.probe_seen:
                    continue
                reason = "no reply" if self.replies == seen else "probe did not come back"
            logger.warning("redis: %s within %ss, reconnecting", reason, interval)
            await pubsub.connection.disconnect(nowait=True)
            return

    def _drop_too_large(self, channel: bytes, size: int) -> None:
        self.stats.dropped_too_large += 1
        logger.warning(
            "dropped a message of %d bytes on %r: larger than --max-message-size (%d)",
            size,
            channel,
            self.max_message_size,
        )

    def _came_up(self) -> None:
        self.live = True
        self.stats.redis_subscribed = 1
        self.stats.redis_connects += 1
        self._failing = False
        if self.link is None:
            what = repr(pattern_for(self.prefix).decode(errors="replace"))
        else:
            what = f"the channels of {len(self.link.dirty)} token(s) with clients"
            what += " (sharded)" if self.commands.per_slot else ""
        logger.info("redis: subscribed to %s at %s", what, redact_url(self.url))
        self.hub.resubscribed()
        if self.on_change is not None:
            self.on_change()

    def _mark_down(self) -> None:
        if self.live:
            self.stats.redis_disconnects += 1
        self.live = False
        self.stats.redis_subscribed = 0
        if self.on_change is not None:
            self.on_change()

    def _went_down(self, exc: Exception) -> None:
        if self._failing:
            logger.debug("redis: still unavailable: %s", exc)
            return
        self._failing = True
        logger.error(
            "redis: %s at %s: %s; clients stay connected, retrying every %.0fs",
            type(exc).__name__,
            redact_url(self.url),
            exc or "connection lost",
            self.retry_interval,
        )

    @staticmethod
    async def _close(client: aioredis.Redis, pubsub: Any) -> None:
        try:
            await pubsub.aclose()
            await client.aclose()
        except Exception:  # the connection is already broken; nothing left to release
            logger.debug("redis: error while closing", exc_info=True)


async def confirm(interest: Interest, token: bytes) -> None:
    """Wait for the confirmation of `token`'s channel; log when it does not come."""
    if not await interest.wait_confirmed(token, CONFIRM_TIMEOUT):
        logger.warning(
            "redis: no confirmation of the subscription for token %r within %ss",
            token,
            CONFIRM_TIMEOUT,
        )
