"""The Redis side: one `PSUBSCRIBE <prefix>*` per app, kept alive forever.

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
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from wspush.hub import Hub
from wspush.sentinel import redis_from_url
from wspush.settings import redact_url
from wspush.stats import Stats

logger = logging.getLogger("wspush.redis")

CONNECT_TIMEOUT = 5.0
PROBE_MARK = b"wspush-probe-"
READ_TIMEOUT = 1.0


def pattern_for(prefix: bytes) -> bytes:
    """`<prefix>*`, with glob characters of the prefix escaped so it matches literally."""
    return re.sub(rb"([*?\[\]\\])", rb"\\\1", prefix) + b"*"


class Subscriber:
    """Reads pattern messages from Redis and hands them to the hub."""

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
    ) -> None:
        self.url = url
        self.max_message_size = max_message_size
        self.tls_verify = tls_verify
        self.health_interval = health_interval
        # A channel under the prefix whose token is too long for any client: the
        # watchdog publishes here and expects to read it back on the subscription.
        self.probe_channel = prefix + PROBE_MARK + uuid.uuid4().hex.encode() * 2
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

    async def _session(self) -> None:
        options: dict[str, Any] = {}
        if not self.url.startswith("unix:"):
            options["socket_keepalive"] = True
        if self.url.startswith(("rediss:", "rediss+sentinel:")) and not self.tls_verify:
            options["ssl_cert_reqs"] = "none"
        client = redis_from_url(
            self.url,
            socket_connect_timeout=CONNECT_TIMEOUT,
            **options,
            retry=Retry(NoBackoff(), 0),  # this loop owns retries
            protocol=2,  # pmessages as plain replies (RESP3 would route them to a handler)
            client_name="wspush",
        )
        pubsub = client.pubsub()
        try:
            await pubsub.psubscribe(pattern_for(self.prefix))
            await self._await_confirmation(pubsub)
            self._came_up()
            await self._relay(pubsub, client)
        finally:
            self._mark_down()
            await asyncio.shield(self._close(client, pubsub))

    async def _await_confirmation(self, pubsub: Any) -> None:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            while True:
                message = await pubsub.get_message(timeout=READ_TIMEOUT)
                if message is not None and message["type"] == "psubscribe":
                    return

    async def _relay(self, pubsub: Any, client: aioredis.Redis) -> None:
        """The hot loop: one pmessage -> one hub.publish, nothing else.

        It reads the connection directly, with no timeout per read (redis-py's
        get_message() builds a dict and arms a timer for every message); the watchdog
        beside it notices a connection that has gone silent.
        """
        read = pubsub.connection.read_response
        cut = len(self.prefix)
        publish = self.hub.publish
        stats = self.stats
        probe = self.probe_channel
        probe_size = len(probe)
        probes = self.prefix + PROBE_MARK
        too_large = self.max_message_size
        watchdog = asyncio.create_task(self._watch(pubsub, client), name="wspush-redis-watchdog")
        try:
            while True:
                response = await read(timeout=math.inf)
                self.replies += 1
                if response[0] == b"pmessage":
                    channel = response[2]
                    if len(channel) == probe_size and channel.startswith(probes):
                        # A health probe: ours, or another relay's on the same Redis.
                        self.probe_seen = self.probe_seen or channel == probe
                        continue
                    stats.messages_seen += 1
                    data = response[3]
                    if len(data) > too_large:
                        self._drop_too_large(channel, len(data))
                        continue
                    publish(channel[cut:], data)
        finally:
            watchdog.cancel()

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
                await asyncio.wait_for(client.publish(self.probe_channel, b"probe"), interval)
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
        logger.info(
            "redis: subscribed to %r at %s",
            pattern_for(self.prefix).decode(errors="replace"),
            redact_url(self.url),
        )

    def _mark_down(self) -> None:
        if self.live:
            self.stats.redis_disconnects += 1
        self.live = False
        self.stats.redis_subscribed = 0

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
