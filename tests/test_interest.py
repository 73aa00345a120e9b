"""Exact subscribe mode: wspush subscribes the channels of the tokens it has clients for,
in batches, without losing a message around a client's arrival, and again after Redis
comes back."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import httpx
import pytest
import redis.asyncio as aioredis

from tests.clients import SSEClient, receive, websocket
from tests.conftest import RedisServer, Wspush, free_port, wait_until
from wspush.interest import Interest, Link

pytestmark = pytest.mark.anyio

EXACT = ("--subscribe-mode", "exact")


def channels(redis: RedisServer) -> set[str]:
    """The client channels subscribed on `redis` (wspush's probe channels left out)."""
    with redis.client() as client:
        names = {c.decode() for c in client.pubsub_channels()}
    return {name for name in names if "wspush-probe-" not in name}


def expvar(port: int) -> dict[str, int]:
    return httpx.get(f"http://127.0.0.1:{port}/debug/vars", timeout=5).json()["wspush"]  # type: ignore[no-any-return]


def test_link_resubscribes_a_token_that_came_back_during_its_unsubscribe() -> None:
    """The reconciliation on its own: decisions against what was sent, confirmation only
    once the last command for the token has been answered."""

    async def scenario() -> None:
        interest = Interest()
        link = Link(interest)
        interest.route = lambda token: link
        interest.first_client(b"a")
        assert link.plan() == ([b"a"], [])
        assert not interest.is_confirmed(b"a")
        link.replied(b"a", subscribed=True)
        assert interest.is_confirmed(b"a")

        interest.last_client(b"a")
        assert link.plan() == ([], [b"a"])  # UNSUBSCRIBE a is in flight...
        interest.first_client(b"a")  # ...when a client of `a` arrives
        assert link.plan() == ([b"a"], [])
        link.replied(b"a", subscribed=False)  # the UNSUBSCRIBE's reply does not confirm
        assert not interest.is_confirmed(b"a")
        link.replied(b"a", subscribed=True)
        assert interest.is_confirmed(b"a")

        interest.last_client(b"a")
        interest.first_client(b"a")  # left and came back within one batch: no command
        assert link.plan() == ([], [])
        assert interest.is_confirmed(b"a")

        link.replied(b"a", subscribed=False)  # unasked: the server dropped the channel
        assert not interest.is_confirmed(b"a")
        assert link.plan() == ([b"a"], [])

    asyncio.run(scenario())


async def test_exact_mode_subscribes_only_tokens_with_clients(
    spawn: Callable[..., Wspush], fresh_redis: RedisServer
) -> None:
    server = spawn("-redis", fresh_redis.address, *EXACT)
    assert channels(fresh_redis) == set()
    async with websocket(server.ws_url("alice")) as ws:
        async with SSEClient(f"{server.url}/sse?token=bob") as sse:
            # Open means confirmed: the channels are there already, no waiting.
            assert channels(fresh_redis) == {"example.alice", "example.bob"}
            assert fresh_redis.publish("example.alice", "for alice") == 1
            assert fresh_redis.publish("example.bob", "for bob") == 1
            assert await receive(ws) == b"for alice"
            await sse.wait_for(b"data:for bob\n\n")
        wait_until(lambda: channels(fresh_redis) == {"example.alice"}, 5, "bob's channel to go")
        assert fresh_redis.publish("example.bob", "nobody") == 0
        assert fresh_redis.publish("example.carol", "nobody") == 0
    wait_until(lambda: channels(fresh_redis) == set(), 5, "alice's channel to go")
    assert "subscribed to the channels of 0 token(s)" in server.log()


async def test_many_arrivals_make_few_subscribe_commands(
    spawn: Callable[..., Wspush], fresh_redis: RedisServer
) -> None:
    server = spawn("-redis", fresh_redis.address, *EXACT, "--max-per-ip", "0")
    with fresh_redis.client() as client:
        client.config_resetstat()
    tokens = [f"batch{i}" for i in range(60)]
    async with asyncio.timeout(30):
        sockets = [websocket(server.ws_url(token)) for token in tokens]
        opened = await asyncio.gather(*(s.__aenter__() for s in sockets))
        assert channels(fresh_redis) == {f"example.{t}" for t in tokens}
        with fresh_redis.client() as client:
            calls = client.info("commandstats")["cmdstat_subscribe"]["calls"]
        assert calls < len(tokens) / 3, calls
        for ws, token in zip(opened, tokens, strict=True):
            fresh_redis.publish(f"example.{token}", token)
            assert await receive(ws) == token.encode()
        await asyncio.gather(*(s.__aexit__(None, None, None) for s in sockets))
    wait_until(lambda: channels(fresh_redis) == set(), 5, "every channel to go")
    with fresh_redis.client() as client:
        calls = client.info("commandstats")["cmdstat_unsubscribe"]["calls"]
    assert calls < len(tokens) / 3, calls


async def test_hammer_connects_and_disconnects_while_publishing(
    spawn: Callable[..., Wspush], fresh_redis: RedisServer
) -> None:
    """Clients of a few tokens come and go as fast as they can while every token gets a
    numbered message every few milliseconds. Every client must get every message whose
    PUBLISH was issued after its connection opened and answered before it closed."""
    server = spawn("-redis", fresh_redis.address, *EXACT, "--max-per-token", "100")
    tokens = [f"h{i}" for i in range(4)]
    issued = dict.fromkeys(tokens, 0)  # PUBLISHes sent so far
    answered = dict.fromkeys(tokens, 0)  # PUBLISHes Redis has answered
    stop = asyncio.Event()
    publisher = aioredis.Redis(port=fresh_redis.port)
    checked = 0

    async def publish() -> None:
        while not stop.is_set():
            for token in tokens:
                issued[token] += 1
                seq = issued[token]
                await publisher.publish(f"example.{token}", str(seq))
                answered[token] = seq
            await asyncio.sleep(0.002)

    async def client(rng: random.Random) -> None:
        nonlocal checked
        while not stop.is_set():
            token = rng.choice(tokens)
            if rng.random() < 0.3:
                async with SSEClient(f"{server.url}/sse?token={token}") as sse:
                    first = issued[token]
                    await asyncio.sleep(rng.uniform(0, 0.15))
                    last = answered[token]
                    if last > first:  # else nothing was published while it was open
                        await sse.wait_for(f"data:{last}\n\n".encode())
                    got = {int(e) for e in sse.events()}
            else:
                async with websocket(server.ws_url(token)) as ws:
                    first = issued[token]
                    await asyncio.sleep(rng.uniform(0, 0.15))
                    last = answered[token]
                    got = set()
                    while last > first and last not in got:
                        got.add(int(await receive(ws)))
            missing = set(range(first + 1, last + 1)) - got
            assert not missing, f"{token}: missing {sorted(missing)[:10]} of {first + 1}..{last}"
            checked += 1

    stayers = []
    async with asyncio.timeout(60):
        publishing = asyncio.create_task(publish())
        clients = [asyncio.create_task(client(random.Random(n))) for n in range(12)]
        await asyncio.sleep(6)
        stayers = [websocket(server.ws_url(t)) for t in tokens[:2]]
        for stayer in stayers:
            await stayer.__aenter__()
        stop.set()
        await asyncio.gather(publishing, *clients)
        assert checked > 50, checked
        wait_until(
            lambda: channels(fresh_redis) == {f"example.{t}" for t in tokens[:2]},
            5,
            "only the tokens still connected to remain subscribed",
        )
        for stayer in stayers:
            await stayer.__aexit__(None, None, None)
    await publisher.aclose()
    wait_until(lambda: channels(fresh_redis) == set(), 5, "every channel to go")


async def test_resubscribes_everything_after_redis_restarts(
    spawn: Callable[..., Wspush], fresh_redis: RedisServer
) -> None:
    server = spawn("-redis", fresh_redis.address, *EXACT)
    async with (
        websocket(server.ws_url("r1")) as ws1,
        websocket(server.ws_url("r2")) as ws2,
    ):
        fresh_redis.kill()
        wait_until(lambda: server.status("/ready") == 503, 5, "/ready to report the outage")
        fresh_redis.start()
        server.wait_ready(10)
        wait_until(
            lambda: channels(fresh_redis) == {"example.r1", "example.r2"}, 5, "re-subscription"
        )
        fresh_redis.publish("example.r1", "one")
        fresh_redis.publish("example.r2", "two")
        assert await receive(ws1) == b"one"
        assert await receive(ws2) == b"two"


async def test_health_probe_works_in_exact_mode(
    spawn: Callable[..., Wspush], fresh_redis: RedisServer
) -> None:
    server = spawn("-redis", fresh_redis.address, *EXACT, "--redis-health-interval", "0.2")
    with fresh_redis.client() as client:
        probes = [c for c in client.pubsub_channels() if b"wspush-probe-" in c]
    assert len(probes) == 1
    await asyncio.sleep(1.5)
    assert server.status("/ready") == 200
    assert "reconnecting" not in server.log()
    async with websocket(server.ws_url("probed")) as ws:
        fresh_redis.publish("example.probed", "fine")
        assert await receive(ws) == b"fine"


@pytest.mark.parametrize("mode", ["pattern", "exact"])
async def test_instances_see_only_their_own_tokens_in_exact_mode(
    spawn: Callable[..., Wspush], fresh_redis: RedisServer, mode: str
) -> None:
    """Two instances with disjoint clients: in exact mode each reads from Redis only the
    messages of its own tokens; in pattern mode each reads them all."""
    ports = [free_port(), free_port()]
    servers = [
        spawn("-redis", fresh_redis.address, "--subscribe-mode", mode, "-expvar", f"127.0.0.1:{p}")
        for p in ports
    ]
    owned = [["one-a", "one-b"], ["two-a", "two-b", "two-c"]]
    async with asyncio.timeout(20):
        sockets = [
            websocket(server.ws_url(token))
            for server, tokens in zip(servers, owned, strict=True)
            for token in tokens
        ]
        opened = [await s.__aenter__() for s in sockets]
        for token in [t for tokens in owned for t in tokens]:
            for n in range(10):
                fresh_redis.publish(f"example.{token}", str(n))
        for ws in opened:
            assert [await receive(ws) for _ in range(10)] == [str(n).encode() for n in range(10)]
        for s in sockets:
            await s.__aexit__(None, None, None)
    seen = [expvar(port)["messages_seen"] for port in ports]
    if mode == "exact":
        assert seen == [20, 30]
    else:  # everything, and the other instance's health probes too
        assert all(50 <= n <= 52 for n in seen), seen
