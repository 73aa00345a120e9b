"""Connection churn leaves nothing behind: no hub entry, no task, no file descriptor,
and no memory growth beyond a small bound.

The default run does a short version on every test run; the full 100,000-cycle soak is
marked `soak` and runs on demand: `python -m pytest -m soak`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from tests.clients import RawWebSocket
from tests.conftest import RedisServer, Wspush, free_port, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.both_servers]

CONCURRENCY = 50


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1])


async def churn(server: Wspush, cycles: int) -> None:
    """Open and drop `cycles` connections, alternating WebSocket and SSE, 50 at a time.

    Raw sockets, dropped without a goodbye: the harshest way for a client to leave,
    and cheap enough on the test's side to run many cycles.
    """
    semaphore = asyncio.Semaphore(CONCURRENCY)

    async def cycle(i: int) -> None:
        async with semaphore:
            token = f"churn{i % 500}"
            if i % 2:
                ws = await RawWebSocket.open(server.port, f"/?token={token}")
                ws.close()
                return
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(f"GET /sse?token={token} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200"), head
            writer.close()

    await asyncio.gather(*(cycle(i) for i in range(cycles)))


async def check_churn_leaves_nothing(
    spawn: Callable[..., Wspush], redis_server: RedisServer, cycles: int, rss_bound_kb: int
) -> None:
    expvar = free_port()
    server = spawn("-redis", redis_server.address, "-expvar", f"127.0.0.1:{expvar}")
    assert server.process is not None

    def gauges() -> dict[str, int]:
        return httpx.get(f"http://127.0.0.1:{expvar}/debug/vars", timeout=5).json()["wspush"]  # type: ignore[no-any-return]

    await churn(server, 200)  # warm up allocator pools and caches before the baseline
    wait_until(lambda: gauges()["connections_open"] == 0, 10, "warm-up connections to close")
    before, rss_before = gauges(), rss_kb(server.process.pid)

    await churn(server, cycles)

    wait_until(lambda: gauges()["connections_open"] == 0, 10, "churned connections to close")
    await asyncio.sleep(0.5)
    after, rss_after = gauges(), rss_kb(server.process.pid)
    print(
        f"churn {cycles} cycles: RSS {rss_before} -> {rss_after} KB, "
        f"tasks {before['asyncio_tasks']} -> {after['asyncio_tasks']}, "
        f"fds {before['open_files']} -> {after['open_files']}, tokens {after['tokens']}"
    )
    assert after["tokens"] == 0
    assert after["asyncio_tasks"] <= before["asyncio_tasks"]
    assert after["open_files"] <= before["open_files"]
    assert after["sessions_seen"] - before["sessions_seen"] == cycles
    assert rss_after - rss_before < rss_bound_kb, (rss_before, rss_after)


async def test_short_churn_leaves_nothing_behind(
    spawn: Callable[..., Wspush], redis_server: RedisServer
) -> None:
    await check_churn_leaves_nothing(spawn, redis_server, cycles=3_000, rss_bound_kb=16_000)


@pytest.mark.soak
@pytest.mark.timeout(1800)
async def test_100k_churn_cycles_leave_nothing_behind(
    spawn: Callable[..., Wspush], redis_server: RedisServer
) -> None:
    await check_churn_leaves_nothing(spawn, redis_server, cycles=100_000, rss_bound_kb=24_000)
