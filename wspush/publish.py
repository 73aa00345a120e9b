"""Publishing from a Python backend: one call that does what `PUBLISH <prefix><token>`
does, with the message encoded the way wspush delivers it.

    import redis, wspush
    r = redis.Redis.from_url("redis://localhost:6379")
    wspush.publish(r, token, {"type": "order-shipped", "id": 42})   # JSON
    await wspush.apublish(async_redis, token, "hello")               # redis.asyncio

Behind Redis Sentinel, publish through a client of the current primary (redis-py asks the
sentinels again after a failover); `redis.asyncio.sentinel.Sentinel` works the same way:

    from redis.sentinel import Sentinel
    sentinel = Sentinel([("s1", 26379), ("s2", 26379)], sentinel_kwargs={"password": "..."})
    wspush.publish(sentinel.master_for("mymaster", password="..."), token, "hello")

With `history=N` (wspush's `--history-size`) the message is also recorded in the token's
history, so clients that reconnect get what they missed (see wspush.history); the call
then returns the message's id. `history_ttl` is `--history-ttl`, in seconds.

With `sharded=True` they send SPUBLISH (Redis 7+), which a wspush in exact subscribe
mode on a Redis Cluster needs (see docs/scaling.md); pass a `redis.RedisCluster` so
the command goes to the node that serves the channel's slot.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable
from typing import Any, Protocol

from wspush.history import (
    DEFAULT_TTL,
    apublish_with_history,
    publish_with_history,
    queue_reads,
    replay_of,
)

DEFAULT_PREFIX = "example."


class SyncPublisher(Protocol):
    def publish(self, channel: bytes, message: bytes) -> Any: ...

    def spublish(self, shard_channel: bytes, message: bytes) -> Any: ...


class AsyncPublisher(Protocol):
    def publish(self, channel: bytes, message: bytes) -> Awaitable[Any]: ...

    def spublish(self, shard_channel: bytes, message: bytes) -> Awaitable[Any]: ...


def encode_message(message: str | bytes | Any) -> bytes:
    """Bytes as they are, text as UTF-8, anything else as compact JSON."""
    if isinstance(message, bytes):
        return message
    if isinstance(message, str):
        return message.encode()
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()


def channel_for(token: str | bytes, prefix: str | bytes = DEFAULT_PREFIX) -> bytes:
    """`<prefix><token>`, the channel a client with `?token=<token>` listens on."""
    prefix = prefix.encode() if isinstance(prefix, str) else prefix
    token = token.encode() if isinstance(token, str) else token
    if not token:
        raise ValueError("the token must not be empty")
    return prefix + token


def publish(
    client: SyncPublisher,
    token: str | bytes,
    message: Any,
    prefix: str | bytes = DEFAULT_PREFIX,
    *,
    sharded: bool = False,
    history: int = 0,
    history_ttl: int = DEFAULT_TTL,
) -> int | str:
    """Publish with a redis-py client; returns how many subscribers Redis reached
    (wspush processes, not browsers; on a cluster, only those on the node it reached).
    Behind Sentinel, pass `Sentinel(...).master_for(name)`.

    `sharded=True` sends SPUBLISH, for wspush in exact mode on a Redis Cluster.
    `history=N` records the message in the token's last N and returns its id instead.
    """
    channel, payload = channel_for(token, prefix), encode_message(message)
    if history > 0:
        return publish_with_history(
            client, channel, payload, history, history_ttl, sharded
        ).decode()
    send = client.spublish if sharded else client.publish
    return int(send(channel, payload))


async def apublish(
    client: AsyncPublisher,
    token: str | bytes,
    message: Any,
    prefix: str | bytes = DEFAULT_PREFIX,
    *,
    sharded: bool = False,
    history: int = 0,
    history_ttl: int = DEFAULT_TTL,
) -> int | str:
    """`publish` for a `redis.asyncio` client (`redis.asyncio.RedisCluster` and
    `redis.asyncio.sentinel`'s `master_for` included)."""
    channel, payload = channel_for(token, prefix), encode_message(message)
    if history > 0:
        recorded = await apublish_with_history(
            client, channel, payload, history, history_ttl, sharded
        )
        return recorded.decode()
    send = client.spublish if sharded else client.publish
    return int(await send(channel, payload))


def current_position(client: Any, token: str | bytes, prefix: str | bytes = DEFAULT_PREFIX) -> str:
    """The id of the token's newest message in history (or of its start, with none):
    hand it to a page with the state you render, and the page connects with
    `?last_event_id=<it>` to get everything published after, none of it twice."""
    channel = channel_for(token, prefix)
    pipe = client.pipeline(transaction=False)
    queue_reads(pipe, channel, None)
    return str(replay_of(channel, False, None, pipe.execute()).current)


async def acurrent_position(
    client: Any, token: str | bytes, prefix: str | bytes = DEFAULT_PREFIX
) -> str:
    """`current_position` for a `redis.asyncio` client."""
    channel = channel_for(token, prefix)
    pipe = client.pipeline(transaction=False)
    queue_reads(pipe, channel, None)
    return str(replay_of(channel, False, None, await pipe.execute()).current)
