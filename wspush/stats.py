"""Counters of what the relay did, kept as plain numbers (cheap on the hot path).

The first three keep the names the Go program publishes at `/debug/vars`. Prometheus
metrics are made from these when scraped (see `wspush.metrics`), so the hot path never
touches a metrics library.
"""

from __future__ import annotations

import bisect
import dataclasses
from dataclasses import dataclass, field

# Upper bounds, in seconds, of the delivery latency histogram's buckets.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)


@dataclass
class Stats:
    sessions_seen: int = 0  # connection attempts with any outcome, as Go counts them
    messages_seen: int = 0  # messages received from Redis on the prefix
    successful_deliveries: int = 0  # messages written to a client
    connections_open: int = 0
    connections_open_ws: int = 0
    connections_open_sse: int = 0
    refused_bad_token: int = 0
    refused_token_limit: int = 0
    refused_draining: int = 0
    refused_origin: int = 0
    refused_method: int = 0
    refused_capacity: int = 0
    refused_ip_limit: int = 0
    refused_not_websocket: int = 0
    refused_token_expired: int = 0
    refused_request_head: int = 0  # request heads over --max-request-head (431)
    dropped_queue_full: int = 0  # deliveries dropped because a client's buffer was full
    dropped_flood: int = 0  # deliveries shed while the relay was behind Redis
    dropped_too_large: int = 0  # messages over --max-message-size, sent to nobody
    slow_clients_disconnected: int = 0  # connections cut after --max-drops drops
    expired_clients_disconnected: int = 0  # connections closed when their token expired
    skipped_invalid_utf8: int = 0  # deliveries skipped: SSE/text needs UTF-8
    skipped_empty: int = 0  # SSE deliveries skipped: an empty message has no SSE form
    heartbeats_sent: int = 0
    resume_replayed: int = 0  # messages read from history and sent (--history-size)
    resume_resets: int = 0  # positions that could not be resumed from: reset signals
    resume_gaps_repaired: int = 0  # live messages that did not follow: history read
    resume_duplicates_dropped: int = 0  # live messages a replay had sent already
    bytes_sent: int = 0  # bytes of messages and heartbeats written to clients
    redis_connects: int = 0
    redis_disconnects: int = 0
    redis_subscribed: int = 0  # 1 while the pattern subscription is live

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


# Stats fields that are levels, not running totals.
GAUGES = frozenset(
    {"connections_open", "connections_open_ws", "connections_open_sse", "redis_subscribed"}
)


@dataclass
class LatencyHistogram:
    """Seconds from a message's arrival from Redis to its write to a client's socket.

    Unlike prometheus-client's Histogram, `observe` takes a count: a batch of writes
    that left at the same moment is one call, not one per delivery.
    """

    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0  # sum of all observed seconds

    def observe(self, seconds: float, count: int = 1) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += count
        self.total += seconds * count

    def merge(self, counts: list[int], total: float) -> None:
        """Add another process's observations (same bounds)."""
        self.counts = [a + b for a, b in zip(self.counts, counts, strict=True)]
        self.total += total
