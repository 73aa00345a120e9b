"""Counters of what the relay did, kept as plain integers (cheap on the hot path).

The first three keep the names the Go program publishes at `/debug/vars`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass
class Stats:
    sessions_seen: int = 0  # connection attempts with any outcome, as Go counts them
    messages_seen: int = 0  # messages received from Redis on the prefix
    successful_deliveries: int = 0  # messages written to a client
    connections_open: int = 0
    refused_bad_token: int = 0
    refused_token_limit: int = 0
    refused_draining: int = 0
    refused_origin: int = 0
    refused_method: int = 0
    refused_capacity: int = 0
    refused_ip_limit: int = 0
    refused_not_websocket: int = 0
    dropped_queue_full: int = 0  # deliveries dropped because a client's buffer was full
    dropped_too_large: int = 0  # messages over --max-message-size, sent to nobody
    slow_clients_disconnected: int = 0  # connections cut after --max-drops drops
    skipped_invalid_utf8: int = 0  # deliveries skipped: SSE/text needs UTF-8
    skipped_empty: int = 0  # SSE deliveries skipped: an empty message has no SSE form
    heartbeats_sent: int = 0
    redis_connects: int = 0
    redis_disconnects: int = 0
    redis_subscribed: int = 0  # 1 while the pattern subscription is live

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)
