"""Reading the subscription in whole socket reads, and the flood gate's decisions."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from tests.conftest import RedisServer, wait_until
from wspush.intake import FLOOD_TICK, MIN_ALLOWANCE, FloodGate, ReplyIntake

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_the_intake_takes_over_redis_pys_connection_and_loses_nothing(
    redis_server: RedisServer,
) -> None:
    """Every reply, in order, handed over a read at a time; then the end of the connection
    is raised, and redis-py still closes it. This relies on redis-py's hiredis parser
    internals; a redis-py that changes them must fail here, not silently fall back to
    the slow path."""
    client = aioredis.Redis(port=redis_server.port, protocol=2)
    pubsub = client.pubsub()
    try:
        await pubsub.psubscribe(b"intake-test.*")
        confirmation = await pubsub.get_message(timeout=5)
        assert confirmation is not None
        assert confirmation["type"] == "psubscribe"
        assert ReplyIntake.usable(pubsub.connection)
        reads: list[list[bytes]] = []
        intake = ReplyIntake(
            pubsub.connection, lambda replies: reads.append([reply[3] for reply in replies])
        )
        intake.start()
        async with (
            aioredis.Redis(port=redis_server.port) as publisher,
            publisher.pipeline(transaction=False) as pipe,
        ):
            for seq in range(5000):
                pipe.publish(b"intake-test.t", b"%d" % seq)
            await pipe.execute()
        await asyncio.to_thread(wait_until, lambda: sum(map(len, reads)) >= 5000, 10, "every reply")
        assert [payload for read in reads for payload in read] == [
            b"%d" % seq for seq in range(5000)
        ]
        assert all(reads)  # no empty hand-over
        assert not intake.behind  # a burst this size is not a flood
        async with aioredis.Redis(port=redis_server.port) as admin:
            await admin.client_kill_filter(_type="pubsub")
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(intake.closed(), 5)
    finally:
        await asyncio.wait_for(pubsub.aclose(), 5)  # type: ignore[no-untyped-call]
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
