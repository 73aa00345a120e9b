"""Prometheus metrics, made from the relay's plain counters at scrape time.

The hot path only adds to integers in `Stats` and `LatencyHistogram`; a scrape turns
them into metric families (a custom collector, as prometheus-client recommends for
values kept elsewhere). With several worker processes each worker's figures are read
from the shared stats directory and summed (see `wspush.workers`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from wspush.stats import GAUGES, LATENCY_BUCKETS, LatencyHistogram, Stats
from wspush.version import __version__

REFUSAL_REASONS = (
    "bad_token",
    "token_limit",
    "draining",
    "origin",
    "method",
    "capacity",
    "ip_limit",
    "not_websocket",
    "token_expired",
    "request_head",
)
# Why a delivery did not happen: the `reason` label of wspush_messages_dropped_total.
DROP_REASONS = {
    "queue_full": "dropped_queue_full",
    "flood": "dropped_flood",
    "too_large": "dropped_too_large",
    "invalid_utf8": "skipped_invalid_utf8",
    "empty": "skipped_empty",
}


@dataclass
class Snapshot:
    """Everything the metrics show, as plain data: one process's, or the sum of several."""

    stats: dict[str, int]
    gauges: dict[str, int] = field(default_factory=dict)  # read on demand: tokens, tasks...
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_total: float = 0.0
    processes: int = 1

    @classmethod
    def of(cls, stats: Stats, latency: LatencyHistogram, gauges: dict[str, int]) -> Snapshot:
        return cls(stats.as_dict(), dict(gauges), list(latency.counts), latency.total)

    @classmethod
    def combine(cls, live: list[Snapshot], exited: list[Snapshot]) -> Snapshot:
        """Sum processes: running totals of every process that ever ran, levels (open
        connections, subscription up) of the live ones only."""
        total = cls({name: 0 for name in Stats().as_dict()}, processes=len(live))
        histogram = LatencyHistogram()
        for snapshot in [*live, *exited]:
            is_live = any(snapshot is other for other in live)
            for name, value in snapshot.stats.items():
                if is_live or name not in GAUGES:
                    total.stats[name] = total.stats.get(name, 0) + value
            if is_live:
                for name, value in snapshot.gauges.items():
                    total.gauges[name] = total.gauges.get(name, 0) + value
            histogram.merge(snapshot.latency_counts, snapshot.latency_total)
        total.latency_counts, total.latency_total = histogram.counts, histogram.total
        return total


SnapshotSource = Callable[[], Snapshot]


class RelayCollector(Collector):
    """The wspush_* metric families, from whatever snapshot `source` gives."""

    def __init__(self, source: SnapshotSource) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        snap = self.source()
        stats = snap.stats

        def counter(name: str, documentation: str, stat: str) -> CounterMetricFamily:
            return CounterMetricFamily(f"wspush_{name}", documentation, value=stats[stat])

        def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"wspush_{name}", documentation, value=value)

        info = GaugeMetricFamily("wspush_build_info", "wspush version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        yield gauge("processes", "wspush worker processes reporting", snap.processes)
        open_ = GaugeMetricFamily(
            "wspush_connections_open", "Connections open now", labels=["transport"]
        )
        open_.add_metric(["ws"], stats["connections_open_ws"])
        open_.add_metric(["sse"], stats["connections_open_sse"])
        yield open_
        yield counter("sessions", "Connection attempts, refused ones included", "sessions_seen")
        refused = CounterMetricFamily(
            "wspush_connections_refused", "Connections refused, by reason", labels=["reason"]
        )
        for reason in REFUSAL_REASONS:
            refused.add_metric([reason], stats[f"refused_{reason}"])
        yield refused
        yield counter("redis_messages", "Messages received from Redis", "messages_seen")
        yield counter("deliveries", "Messages written to clients", "successful_deliveries")
        dropped = CounterMetricFamily(
            "wspush_messages_dropped",
            "Deliveries (or, for too_large, messages) not made, by reason",
            labels=["reason"],
        )
        for reason, stat in DROP_REASONS.items():
            dropped.add_metric([reason], stats[stat])
        yield dropped
        yield counter(
            "slow_clients_disconnected",
            "Clients disconnected after --max-drops lost messages",
            "slow_clients_disconnected",
        )
        yield counter(
            "expired_clients_disconnected",
            "Connections closed because their token expired",
            "expired_clients_disconnected",
        )
        yield counter(
            "resume_replayed", "Messages read from history and sent on resume", "resume_replayed"
        )
        yield counter(
            "resume_resets",
            "Positions that could not be resumed from (clients got a reset signal)",
            "resume_resets",
        )
        yield counter(
            "resume_gaps_repaired",
            "Live messages that did not follow a connection's position (history read)",
            "resume_gaps_repaired",
        )
        yield counter(
            "resume_duplicates_dropped",
            "Live messages a replay had already sent, dropped",
            "resume_duplicates_dropped",
        )
        yield counter("sent_bytes", "Bytes of messages and heartbeats sent", "bytes_sent")
        yield counter("heartbeats", "Heartbeats sent", "heartbeats_sent")
        yield gauge(
            "redis_subscribed",
            "1 while the Redis subscription is live (summed over processes)",
            stats["redis_subscribed"],
        )
        yield counter("redis_connects", "Redis subscriptions established", "redis_connects")
        yield counter("redis_disconnects", "Redis subscriptions lost", "redis_disconnects")
        if "tokens" in snap.gauges:
            yield gauge("tokens", "Tokens with at least one connection", snap.gauges["tokens"])
        yield HistogramMetricFamily(
            "wspush_delivery_latency_seconds",
            "Seconds from a message's arrival from Redis to its write to a client",
            buckets=cumulative(snap.latency_counts),
            sum_value=snap.latency_total,
        )


def cumulative(counts: list[int]) -> list[tuple[str, float]]:
    """Prometheus histogram buckets ((upper bound, observations at or below it)) from
    per-bucket counts."""
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip((*map(str, LATENCY_BUCKETS), "+Inf"), counts, strict=True):
        running += count
        buckets.append((bound, running))
    return buckets


def metrics_registry(source: SnapshotSource) -> CollectorRegistry:
    """A registry of this app's own (never the global one, so apps don't collide)."""
    registry = CollectorRegistry()
    registry.register(RelayCollector(source))
    ProcessCollector(registry=registry)
    return registry


def metrics_endpoint(registry: CollectorRegistry) -> Callable[[Request], Awaitable[Response]]:
    """A Starlette endpoint serving `registry` in Prometheus's text format."""

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return metrics
