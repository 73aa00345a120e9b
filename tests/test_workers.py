"""`wspush --workers N`: several processes on one socket, each subscribed, with metrics
summed over all of them, surviving a worker's death, and a clean stop."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.clients import SSEClient, receive, websocket
from tests.conftest import RedisServer, Wspush, free_port, wait_until
from tests.jwts import KeyPair, signed
from tests.test_metrics import scrape, value
from wspush.shared_stats import SNAPSHOT_INTERVAL

pytestmark = pytest.mark.anyio


def relay_subscriptions(redis_server: RedisServer) -> int:
    with redis_server.client() as client:
        return sum(1 for c in client.client_list(_type="pubsub") if c["name"] == "wspush")


def workers_of(server: Wspush) -> list[int]:
    """The supervisor's worker processes (not multiprocessing's helper processes)."""
    assert server.process is not None
    children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
    pids = [int(pid) for pid in children.read_text().split()]
    return [pid for pid in pids if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]


async def test_two_workers_each_subscribe_and_together_serve_every_client(
    spawn: Callable[..., Wspush], fresh_redis: RedisServer, token: str
) -> None:
    expvar = free_port()
    server = spawn(
        "-redis", fresh_redis.address, "--workers", "2", "-expvar", f"127.0.0.1:{expvar}"
    )
    wait_until(lambda: relay_subscriptions(fresh_redis) == 2, 20, "two subscriptions")
    metrics_urls = (f"{server.url}/metrics", f"http://127.0.0.1:{expvar}/metrics")

    async with (
        websocket(server.ws_url(token)) as ws1,
        websocket(server.ws_url(token)) as ws2,
        websocket(server.ws_url(token)) as ws3,
        SSEClient(f"{server.url}/sse?token={token}") as sse1,
        SSEClient(f"{server.url}/sse?token={token}") as sse2,
    ):

        def sees_every_client() -> bool:
            return all(
                value(scrape(url), "wspush_connections_open", transport="ws") == 3
                and value(scrape(url), "wspush_connections_open", transport="sse") == 2
                for url in metrics_urls
            )

        wait_until(sees_every_client, 10, "every connection in the summed metrics")
        assert fresh_redis.publish(f"example.{token}", "to all") == 2  # both workers
        for ws in (ws1, ws2, ws3):
            assert await receive(ws) == b"to all"
        for sse in (sse1, sse2):
            assert await sse.wait_for(b"data:to all\n\n")

        wait_until(
            lambda: value(scrape(metrics_urls[1]), "wspush_deliveries_total") == 5,
            10,
            "five deliveries summed",
        )
        # Whichever worker answers next reads the others' snapshots: let them be written.
        await asyncio.sleep(SNAPSHOT_INTERVAL * 1.5)
        samples = scrape(metrics_urls[0])
        assert value(samples, "wspush_processes") == 2
        assert value(samples, "wspush_redis_subscribed") == 2
        # Each worker saw the message once from Redis.
        assert value(samples, "wspush_redis_messages_total") == 2
        debug_vars = httpx.get(f"http://127.0.0.1:{expvar}/debug/vars", timeout=5).json()["wspush"]
        assert debug_vars["successful_deliveries"] == 5
        assert debug_vars["connections_open"] == 5


async def test_a_dead_worker_is_replaced_and_its_counts_are_kept(
    spawn: Callable[..., Wspush], fresh_redis: RedisServer, token: str
) -> None:
    server = spawn("-redis", fresh_redis.address, "--workers", "2")
    wait_until(lambda: relay_subscriptions(fresh_redis) == 2, 20, "two subscriptions")
    clients = [websocket(server.ws_url(token)) for _ in range(4)]
    sockets = [await client.__aenter__() for client in clients]
    fresh_redis.publish(f"example.{token}", "before")
    for ws in sockets:
        assert await receive(ws) == b"before"
    for client in clients:
        await client.__aexit__(None, None, None)
    wait_until(
        lambda: value(scrape(f"{server.url}/metrics"), "wspush_deliveries_total") == 4,
        10,
        "four deliveries",
    )
    # A SIGKILL loses what the worker counted since its last snapshot: wait for one.
    await asyncio.sleep(SNAPSHOT_INTERVAL * 1.5)

    victim = workers_of(server)[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(
        lambda: len(workers_of(server)) == 2 and victim not in workers_of(server),
        30,
        "a replacement worker",
    )
    wait_until(lambda: relay_subscriptions(fresh_redis) == 2, 20, "two subscriptions again")
    # The replacement reports from its first snapshot on, a snapshot interval at most.
    wait_until(
        lambda: value(scrape(f"{server.url}/metrics"), "wspush_processes") == 2,
        10,
        "both workers reporting",
    )
    samples = scrape(f"{server.url}/metrics")
    assert value(samples, "wspush_deliveries_total") == 4  # the dead worker's share kept


async def test_sigterm_stops_every_worker_and_closes_websockets_with_1001(
    spawn: Callable[..., Wspush], redis_server: RedisServer, token: str
) -> None:
    server = spawn("-redis", redis_server.address, "--workers", "2")
    async with websocket(server.ws_url(token)) as ws:
        workers = workers_of(server)
        assert len(workers) == 2
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1001
    assert await asyncio.to_thread(server.process.wait, 15) == 0
    assert not any(os.path.exists(f"/proc/{pid}") for pid in workers)


async def test_workers_take_jwts_checked_with_a_public_key_and_expire_them(
    spawn: Callable[..., Wspush],
    fresh_redis: RedisServer,
    key_pairs: dict[str, KeyPair],
    token: str,
) -> None:
    # The settings, keys included, are pickled into each worker process.
    ec = key_pairs["ES256"]
    server = spawn(
        "-redis", fresh_redis.address, "--workers", "2", "--jwt-public-key", str(ec.path),
        "--jwt-leeway", "0",
    )  # fmt: skip
    wait_until(lambda: relay_subscriptions(fresh_redis) == 2, 20, "two subscriptions")
    jwt = signed({"sub": token, "exp": int(time.time()) + 2}, ec.private, "ES256")
    async with websocket(server.ws_url(jwt)) as ws:
        fresh_redis.publish(f"example.{token}", "to a worker")
        assert await receive(ws) == b"to a worker"
        with pytest.raises(ConnectionClosed) as closed:
            await receive(ws, timeout=4)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, "token expired")
    assert server.stop() == 0  # SIGTERM: the workers stop with the supervisor
