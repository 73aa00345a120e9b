"""`-expvar`: `/debug/vars` is the document Go's expvar package serves for the Go
program, so monitoring that reads `wspush.sessions_seen` keeps working after the swap."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.clients import SSEClient, raw_request, receive, websocket
from tests.conftest import SERVERS, RedisServer, Wspush, free_port, status_kb

pytestmark = pytest.mark.anyio

GO_COUNTERS = ("sessions_seen", "messages_seen", "successful_deliveries")


def debug_vars(port: int) -> dict[str, Any]:
    return httpx.get(f"http://127.0.0.1:{port}/debug/vars", timeout=5).json()  # type: ignore[no-any-return]


@pytest.mark.parametrize("engine", SERVERS)
async def test_debug_vars_is_gos_document_with_the_counters_under_wspush(
    spawn_on: Callable[..., Wspush], redis_server: RedisServer, token: str, engine: str
) -> None:
    expvar = free_port()
    server = spawn_on(engine, redis=redis_server.address, expvar=f"127.0.0.1:{expvar}")
    before = debug_vars(expvar)
    assert set(before) == {"cmdline", "memstats", "wspush"}
    assert isinstance(before["cmdline"], list)
    assert before["cmdline"]
    assert all(isinstance(arg, str) for arg in before["cmdline"])
    assert list(before["wspush"])[:3] == list(GO_COUNTERS)
    assert before["wspush"]["connections_open"] == 0  # wspush's own, beside Go's

    # Go's meanings: sessions_seen counts every connection attempt, refused ones too;
    # messages_seen what came from Redis; successful_deliveries what reached a client.
    assert raw_request(server.port, "/?token=", websocket=True).status == 400
    async with (
        websocket(server.ws_url(token)) as ws,
        SSEClient(f"{server.url}/sse?token={token}") as sse,
    ):
        redis_server.publish(f"example.{token}", "counted")
        assert await receive(ws) == b"counted"
        await sse.wait_for(b"data:counted\n\n")
        after = debug_vars(expvar)
    counted = {name: after["wspush"][name] - before["wspush"][name] for name in GO_COUNTERS}
    assert counted == {"sessions_seen": 3, "messages_seen": 1, "successful_deliveries": 2}


def test_memstats_holds_only_figures_measured_in_the_process(
    relay: Wspush, expvar_port: int
) -> None:
    memstats = debug_vars(expvar_port)["memstats"]
    assert set(memstats) == {"HeapObjects", "NumGC", "RSS", "MaxRSS"}
    assert all(isinstance(value, int) and value > 0 for value in memstats.values())
    assert relay.process is not None
    rss_kb = status_kb(relay.process.pid)
    # The process's own resident size, give or take what it allocated in between.
    assert abs(memstats["RSS"] / 1024 - rss_kb) < 0.2 * rss_kb
    assert memstats["MaxRSS"] >= memstats["RSS"]
