"""Reading the subscription in whole socket reads, and the flood gate's decisions."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from tests.conftest import RedisServer
from wspush.intake import FLOOD_TICK, MIN_ALLOWANCE, FloodGate, ReplyReader

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_the_reader_takes_over_redis_pys_connection_and_loses_nothing(
    redis_server: RedisServer,
) -> None:
    """This relies on redis-py's hiredis parser internals; a redis-py that changes them
    must fail here, not silently fall back to the slow path."""
    client = aioredis.Redis(port=redis_server.port, protocol=2)
    pubsub = client.pubsub()
    try:
        await pubsub.psubscribe(b"intake-test.*")
        confirmation = await pubsub.get_message(timeout=5)
        assert confirmation is not None
        assert confirmation["type"] == "psubscribe"
        assert ReplyReader.usable(pubsub.connection)
        reader = ReplyReader(pubsub.connection)
        async with (
            aioredis.Redis(port=redis_server.port) as publisher,
            publisher.pipeline(transaction=False) as pipe,
        ):
            for seq in range(5000):
                pipe.publish(b"intake-test.t", b"%d" % seq)
            await pipe.execute()
        received: list[bytes] = []
        while len(received) < 5000:
            replies = await reader.replies()
            assert len(replies) >= 1
            received.extend(reply[3] for reply in replies)
        assert received == [b"%d" % seq for seq in range(5000)]
        assert not reader.behind  # a burst this size is not a flood
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()


def test_the_gate_delivers_everything_while_the_relay_keeps_up() -> None:
    gate = FloodGate(Clock())
    assert gate.first_to_deliver(5000, behind=False) == 0
    assert gate.allowance is None


def test_behind_it_delivers_only_the_newest_and_fewer_each_time() -> None:
    clock = Clock()
    gate = FloodGate(clock)
    assert gate.first_to_deliver(1000, behind=True) == 500  # the newest half
    clock.now += FLOOD_TICK / 2
    assert gate.first_to_deliver(1000, behind=True) == 1000  # between ticks: none
    clock.now += FLOOD_TICK
    assert gate.first_to_deliver(1000, behind=True) == 750  # the newest quarter
    for _ in range(20):
        clock.now += FLOOD_TICK
        first = gate.first_to_deliver(1000, behind=True)
    assert first == 1000 - MIN_ALLOWANCE  # never nothing at a tick
    assert gate.first_to_deliver(1000, behind=False) == 0  # caught up: everything again
    clock.now += FLOOD_TICK
    assert gate.first_to_deliver(1000, behind=True) == 500  # and starts over if behind again
