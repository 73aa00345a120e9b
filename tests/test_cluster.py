"""wspush on a real local Redis Cluster (3 primaries, 3 replicas): sharded pub/sub in
exact mode, PSUBSCRIBE on one node in pattern mode, and delivery again after a primary
is killed and its replica promoted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from redis.crc import key_slot

import wspush
from tests.clients import receive, websocket
from tests.cluster import LocalCluster, tokens_per_shard
from tests.conftest import Wspush, wait_until
from wspush import history as wspush_history

pytestmark = pytest.mark.anyio

CLUSTER_EXACT = ("--redis-cluster", "--subscribe-mode", "exact")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A cluster shared by the tests that leave it whole."""
    started = LocalCluster(tmp_path_factory.mktemp("cluster")).start()
    yield started
    started.stop()


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A cluster of the test's own, for tests that kill a node."""
    started = LocalCluster(tmp_path / "cluster").start()
    yield started
    started.stop()


def shard_channels(cluster: LocalCluster) -> dict[int, set[str]]:
    """Port of each live primary -> its client shard channels (probes left out)."""
    found = {}
    for node in cluster.alive():
        with node.client() as client:
            if client.info("replication")["role"] != "master":
                continue
            names = client.execute_command("PUBSUB", "SHARDCHANNELS")
        found[node.port] = {n.decode() for n in names if b"wspush-probe-" not in n}
    return found


async def until_received(
    publish: Callable[[], object], receive_one: Callable[[], Awaitable[object]], within: float
) -> float:
    """Publish every 100 ms (publisher errors are retried) until a client gets it."""
    started = time.monotonic()
    async with asyncio.timeout(within):
        while True:
            try:
                publish()
            except redis.RedisError:
                await asyncio.sleep(0.1)
                continue
            try:
                if await asyncio.wait_for(receive_one(), 0.1) == b"again":
                    return time.monotonic() - started
            except TimeoutError:
                continue


async def test_exact_mode_uses_sharded_pubsub_on_each_shard(
    spawn: Callable[..., Wspush], cluster: LocalCluster
) -> None:
    server = spawn("-redis", cluster.seed, *CLUSTER_EXACT)
    tokens = tokens_per_shard()
    publisher = cluster.client()
    async with asyncio.timeout(30):
        async with (
            websocket(server.ws_url(tokens[0])) as ws0,
            websocket(server.ws_url(tokens[1])) as ws1,
            websocket(server.ws_url(tokens[2])) as ws2,
        ):
            # Each channel is subscribed on the primary of its slot, and only there.
            expected = {cluster.primary_for(f"example.{t}").port: {f"example.{t}"} for t in tokens}
            assert shard_channels(cluster) == expected
            for ws, token in zip((ws0, ws1, ws2), tokens, strict=True):
                assert wspush.publish(publisher, token, {"to": token}, sharded=True) == 1
                assert await receive(ws) == b'{"to":"%s"}' % token.encode()
            # A classic PUBLISH does not reach a sharded subscription.
            publisher.publish(f"example.{tokens[0]}", "classic")
            wspush.publish(publisher, tokens[0], "sharded", sharded=True)
            assert await receive(ws0) == b"sharded"
            async_publisher = aioredis.RedisCluster(host="127.0.0.1", port=cluster.nodes[1].port)
            await wspush.apublish(async_publisher, tokens[1], "async", sharded=True)
            assert await receive(ws1) == b"async"
            await async_publisher.aclose()
        wait_until(
            lambda: all(not c for c in shard_channels(cluster).values()), 5, "channels to go"
        )
    publisher.close()
    assert "cluster of 3 shard(s)" in server.log()


async def test_pattern_mode_on_a_cluster_receives_publish_from_any_node(
    spawn: Callable[..., Wspush], cluster: LocalCluster, token: str
) -> None:
    server = spawn("-redis", cluster.seed, "--redis-cluster")
    async with websocket(server.ws_url(token)) as ws:
        for node in cluster.nodes:  # primaries and replicas alike
            node.publish(f"example.{token}", f"via {node.port}")
            assert await receive(ws) == f"via {node.port}".encode()
    assert "subscribed to 'example.*'" in server.log()


async def test_exact_mode_delivers_again_after_a_primary_fails_over(
    spawn: Callable[..., Wspush], own_cluster: LocalCluster
) -> None:
    server = spawn("-redis", own_cluster.seed, *CLUSTER_EXACT, "--redis-health-interval", "2")
    tokens = tokens_per_shard()
    victim = own_cluster.primary_for(f"example.{tokens[1]}")
    publisher = own_cluster.client()
    async with (
        websocket(server.ws_url(tokens[0])) as ws0,
        websocket(server.ws_url(tokens[1])) as ws1,
    ):
        wspush.publish(publisher, tokens[1], "before", sharded=True)
        assert await receive(ws1) == b"before"
        own_cluster.kill(victim)
        # The other shards keep delivering while this one fails over.
        wspush.publish(publisher, tokens[0], "unaffected", sharded=True)
        assert await receive(ws0) == b"unaffected"

        def again() -> None:
            with own_cluster.client() as fresh:  # a publisher that knows the new primary
                wspush.publish(fresh, tokens[1], "again", sharded=True)

        took = await until_received(again, ws1.recv, within=20)
        promoted = own_cluster.primary_for(f"example.{tokens[1]}")
        assert promoted is not victim
        assert f"example.{tokens[1]}" in shard_channels(own_cluster)[promoted.port]
    publisher.close()
    wait_until(lambda: server.status("/ready") == 200, 10, "/ready after the failover")
    print(f"delivery resumed {took:.1f}s after the primary was killed")


async def test_pattern_mode_delivers_again_after_its_node_is_killed(
    spawn: Callable[..., Wspush], own_cluster: LocalCluster, token: str
) -> None:
    server = spawn("-redis", own_cluster.seed, "--redis-cluster")
    async with websocket(server.ws_url(token)) as ws:
        own_cluster.nodes[1].publish(f"example.{token}", "before")
        assert await receive(ws) == b"before"
        own_cluster.kill(own_cluster.nodes[0])  # the seed, where wspush subscribed

        def again() -> None:
            own_cluster.nodes[2].publish(f"example.{token}", "again")

        await until_received(again, ws.recv, within=20)
    assert server.log().count("subscribed to 'example.*'") == 2


async def test_exact_mode_follows_a_slot_moved_to_another_primary(
    spawn: Callable[..., Wspush], own_cluster: LocalCluster
) -> None:
    """Resharding: the old owner unsubscribes the channel by itself (`sunsubscribe`);
    wspush reads the map again and subscribes on the new owner."""
    server = spawn("-redis", own_cluster.seed, *CLUSTER_EXACT)
    token = tokens_per_shard()[0]
    channel = f"example.{token}"
    slot = key_slot(channel.encode())
    source = own_cluster.primary_for(channel)
    target = next(n for n in own_cluster.nodes[:3] if n is not source)
    ids = {}
    for node in (source, target):
        with node.client() as client:
            ids[node.port] = client.execute_command("CLUSTER", "MYID").decode()
    async with websocket(server.ws_url(token)) as ws:
        with own_cluster.client() as publisher:
            wspush.publish(publisher, token, "before", sharded=True)
        assert await receive(ws) == b"before"
        with target.client() as client:
            client.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source.port])
        with source.client() as client:
            client.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target.port])
        for node in (target, source):
            with node.client() as client:
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target.port])
        wait_until(lambda: own_cluster.primary_for(channel) is target, 10, "the slot to move")

        def again() -> None:
            with own_cluster.client() as fresh:
                wspush.publish(fresh, token, "again", sharded=True)

        await until_received(again, ws.recv, within=15)
        assert channel in shard_channels(own_cluster)[target.port]
        assert channel not in shard_channels(own_cluster)[source.port]
    assert "unsubscribed" in server.log()


@pytest.mark.parametrize("mode", ["pattern", "exact"])
async def test_resume_on_a_cluster_in_both_subscribe_modes(
    spawn: Callable[..., Wspush], cluster: LocalCluster, mode: str
) -> None:
    """History key and channel share a slot, the Function is on every primary, and a
    client of each shard resumes exactly (SPUBLISH in exact mode)."""
    from tests.clients import SSEClient
    from tests.test_resume import messages, sse_until

    flags = ("--redis-cluster", "--subscribe-mode", mode, "--history-size", "50")
    server = spawn("-redis", cluster.seed, *flags)
    sharded = mode == "exact"
    for node in cluster.alive():
        with node.client() as client:
            if client.info("replication")["role"] == "master":
                libraries = client.execute_command("FUNCTION", "LIST")
                assert any(b"wspush" in str(entry).encode() for entry in libraries)
    publisher = cluster.client()
    try:
        for token in tokens_per_shard():
            channel = f"example.{token}".encode()
            assert key_slot(wspush_history.history_key(channel)) == key_slot(channel)
            ids = [
                wspush.publish(publisher, token, f"m{n}", history=50, sharded=sharded)
                for n in range(4)
            ]
            url = f"{server.url}/sse?token={token}"
            async with SSEClient(url, {"Last-Event-ID": str(ids[0])}) as client:
                await sse_until(client, 3)
                wspush.publish(publisher, token, "live", history=50, sharded=sharded)
                events = await sse_until(client, 4)
            assert messages(events) == ["m1", "m2", "m3", "live"]
    finally:
        publisher.close()
