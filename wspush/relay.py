"""The running parts of one wspush app and their lifetime.

`Relay.lifespan()` is what an ASGI lifespan (the app's own, or a parent app's) enters:
it starts the Redis subscriber, the heartbeat timer and, when asked, the expvar
listener, and on exit closes every client and the Redis connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from wspush.cluster import ClusterSubscriber
from wspush.engine.exit import server_exiting
from wspush.expvar import ExpvarServer
from wspush.history import load_function
from wspush.hub import Hub
from wspush.interest import Interest
from wspush.logs import log_settings
from wspush.metrics import Snapshot, metrics_registry
from wspush.resume import Resumer
from wspush.sentinel import redis_from_url
from wspush.settings import Settings
from wspush.shared_stats import SharedStats
from wspush.stats import Stats
from wspush.subscriber import EXACT, PATTERN, RedisSubscriber, Subscriber

logger = logging.getLogger("wspush")


def count_open_files() -> int:
    """File descriptors of this process (Linux), or -1 where /proc is not there."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


class Relay:
    """Settings, counters, hub and subscriber of one app; no state is shared between apps."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stats = Stats()
        self.hub = Hub(
            settings.max_per_token,
            settings.queue_size,
            self.stats,
            max_connections=settings.max_connections,
            max_per_ip=settings.max_per_ip,
            max_drops=settings.max_drops,
        )
        self.subscriber = self._subscriber()
        self.resumer: Resumer | None = None
        if settings.history_size > 0:
            self.resumer = self.hub.resumer = Resumer(
                history_client(settings),
                settings.prefix_bytes,
                self.stats,
                hold=settings.queue_size,
                wait_subscribed=self.subscriber.wait_subscribed,
            )
        self.shared_stats: SharedStats | None = None
        self.expvar_socket: socket.socket | None = None
        self.metrics = metrics_registry(self.metrics_snapshot)

    def _subscriber(self) -> RedisSubscriber:
        """The Redis side the settings ask for: pattern or exact, one server or a cluster."""
        settings = self.settings
        interest = Interest() if settings.subscribe_mode == "exact" else None
        self.hub.interest = interest
        if settings.redis_cluster:
            return ClusterSubscriber(
                settings.redis_url,
                settings.prefix_bytes,
                self.hub,
                self.stats,
                interest=interest,
                health_interval=settings.redis_health_interval,
                tls_verify=settings.redis_tls_verify,
                max_message_size=settings.max_message_size,
            )
        subscriber = Subscriber(
            settings.redis_url,
            settings.prefix_bytes,
            self.hub,
            self.stats,
            health_interval=settings.redis_health_interval,
            tls_verify=settings.redis_tls_verify,
            max_message_size=settings.max_message_size,
            commands=PATTERN if interest is None else EXACT,
            interest=interest,
        )
        if interest is not None:
            interest.route = lambda token: subscriber.link
        return subscriber

    def share_stats(self, directory: str, expvar_socket: socket.socket | None) -> None:
        """Run as one of several workers: publish counters to `directory`, report the sum
        of all workers', and serve -expvar on the supervisor's socket."""
        self.shared_stats = SharedStats(directory, self.snapshot)
        self.expvar_socket = expvar_socket

    def snapshot(self) -> Snapshot:
        """This process's figures."""
        return Snapshot.of(self.stats, self.hub.latency, self.gauges())

    def metrics_snapshot(self) -> Snapshot:
        """What /metrics and /debug/vars report: this process's figures, or every
        worker's summed."""
        if self.shared_stats is None:
            return self.snapshot()
        return self.shared_stats.combined()

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        settings = self.settings
        tasks = [
            asyncio.create_task(self.subscriber.run(), name="wspush-redis"),
            asyncio.create_task(
                self.hub.run_heartbeats(settings.ping_interval, settings.ping.encode()),
                name="wspush-heartbeats",
            ),
            asyncio.create_task(self._drain_when_server_exits(), name="wspush-exit-watch"),
        ]
        expvar = None
        if settings.expvar:
            expvar = ExpvarServer(
                settings.expvar, self.metrics_snapshot, self.metrics, self.expvar_socket
            )
            await expvar.start()
        log_settings(settings)
        if self.resumer is not None:
            await self._load_history_function(self.resumer.client)
        try:
            if self.shared_stats is None:
                yield
            else:
                async with self.shared_stats.publishing():
                    yield
        finally:
            self.hub.close_all()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if expvar is not None:
                await expvar.stop()
            if self.resumer is not None:
                await self.resumer.close()
                await self.resumer.client.aclose()
            logger.info("wspush stopped")

    async def _load_history_function(self, client: aioredis.Redis) -> None:
        """Load the publish Function (every primary of a cluster), so that publishers in
        any language can FCALL it; wspush's own helpers load it themselves when missing."""
        try:
            async with asyncio.timeout(5):
                loaded = await load_function(client)
            size = self.settings.history_size
            logger.info("history: %d messages per token, loaded %s", size, loaded)
        except (RedisError, OSError, TimeoutError) as exc:
            logger.warning(
                "history: could not load the publish function yet (%s); wspush's publish "
                "helpers load it themselves, other publishers need it loaded (see README)",
                exc or type(exc).__name__,
            )

    def gauges(self) -> dict[str, int]:
        """Values read when asked (for /debug/vars), to check that nothing leaks."""
        return {
            "tokens": self.hub.tokens(),
            "asyncio_tasks": len(asyncio.all_tasks()),
            "open_files": count_open_files(),
        }

    async def drain(self, within: float) -> None:
        """Close every client (WebSocket 1001, SSE with a retry hint) and wait for them."""
        if not self.hub.draining:
            logger.info("draining %d connection(s)", len(self.hub))
        self.hub.close_all()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self.hub.drained.wait()

    async def _drain_when_server_exits(self) -> None:
        """Under a bare `uvicorn` command, drain as soon as the server is told to exit
        (see `wspush.engine.exit`): SSE streams end with their retry hint, and WebSocket
        clients get their 1001 unless uvicorn closes them first (it sends 1012). The
        `wspush` command drains before uvicorn's own shutdown, so there 1001 always
        comes first.
        """
        await server_exiting()
        await self.drain(self.settings.shutdown_timeout)


def history_client(settings: Settings) -> aioredis.Redis:
    """A client for history reads: the subscription's Redis (a Sentinel's primary, or a
    cluster, whose nodes it finds by itself)."""
    if settings.redis_cluster:
        options: dict[str, Any] = {}
        if settings.redis_url.startswith("rediss:") and not settings.redis_tls_verify:
            options["ssl_cert_reqs"] = "none"
        cluster: Any = aioredis.RedisCluster.from_url(settings.redis_url, **options)
        return cluster  # type: ignore[no-any-return]
    return redis_from_url(settings.redis_url, tls_verify=settings.redis_tls_verify)
