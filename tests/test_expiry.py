"""Tokens that expire stop working on open connections too: one heap and one timer for
all of them close each connection when its token expires, on every delivery path
(`python -m wspush`'s task-free and ASGI paths, and a stock `uvicorn wspush.app:app`)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.clients import SSEClient, receive, websocket
from tests.conftest import RedisServer, StockUvicorn, Wspush
from tests.jwts import SECRET, signed
from wspush import expiry
from wspush.expiry import ExpiryTimer
from wspush.hub import Hub, Transport
from wspush.stats import Stats

pytestmark = pytest.mark.anyio

LEEWAY = 1
EXPIRED_EVENT = b"event: wspush-expired\ndata: token expired\n\n"

# -- through the relay ---------------------------------------------------------------------

ENGINES = {
    # wspush's own protocols: connections held without a task
    "wspush": ["--jwt-leeway", str(LEEWAY)],
    # wspush's protocols, connections through the ASGI app (exact mode waits for Redis)
    "wspush-asgi": ["--jwt-leeway", str(LEEWAY), "--subscribe-mode", "exact"],
    # plain ASGI: WebSocket frames through the server (compression on)
    "wspush-compressed": ["--jwt-leeway", str(LEEWAY), "--ws-compression"],
}


@pytest.fixture(params=[*ENGINES, "stock-uvicorn"])
def server(
    request: pytest.FixtureRequest, redis_server: RedisServer, tmp_path: Path
) -> Iterator[Wspush]:
    """A relay taking JWTs signed with SECRET, leeway 1 s, on each engine."""
    if request.param == "stock-uvicorn":
        env = {
            "REDIS_URL": redis_server.url,
            "WSPUSH_JWT_SECRET": SECRET,
            "WSPUSH_JWT_LEEWAY": str(LEEWAY),
        }
        relay: Wspush = StockUvicorn(tmp_path, env=env)
    else:
        relay = Wspush(
            tmp_path,
            "-redis",
            redis_server.address,
            "--jwt-secret",
            SECRET,
            *ENGINES[request.param],
        )
    relay.start()
    yield relay
    with contextlib.suppress(Exception):
        relay.stop()


async def test_a_connection_is_closed_within_a_second_of_expiry_then_its_token_is_refused(
    server: Wspush, redis_server: RedisServer, token: str
) -> None:
    exp = int(time.time()) + 2  # 1 to 2 s from now; closed at exp + leeway
    jwt = signed({"sub": token, "exp": exp})
    async with (
        websocket(server.ws_url(jwt)) as ws,
        SSEClient(f"{server.url}/sse?token={jwt}") as sse,
    ):
        redis_server.publish(f"example.{token}", "before expiry")
        assert await receive(ws) == b"before expiry"
        await sse.wait_for(b"data:before expiry\n\n")

        async def websocket_closed() -> float:
            with pytest.raises(ConnectionClosed) as closed:
                await receive(ws, timeout=exp + LEEWAY + 3 - time.time())
            assert closed.value.rcvd is not None
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, "token expired")
            return time.time()

        async def stream_ended() -> float:
            body = await sse.wait_end(timeout=exp + LEEWAY + 3 - time.time())
            assert body.endswith(EXPIRED_EVENT)
            return time.time()

        closed_at = await asyncio.gather(websocket_closed(), stream_ended())
    for moment in closed_at:
        assert exp + LEEWAY - 0.05 <= moment <= exp + LEEWAY + 1.0, (moment - exp, closed_at)

    response = httpx.get(f"{server.url}/sse?token={jwt}", timeout=5)
    assert (response.status_code, response.text) == (400, "token expired\n")
    assert response.headers["access-control-allow-origin"] == "*"
    with pytest.raises(InvalidStatus) as refused:
        async with websocket(server.ws_url(jwt)):
            pass
    assert refused.value.response.status_code == 400
    assert refused.value.response.body == b"token expired\n"
    assert refused.value.response.headers["access-control-allow-origin"] == "*"
    assert "Traceback" not in server.log()


async def test_expired_connections_are_counted_and_others_stay_open(
    spawn: Callable[..., Wspush], redis_server: RedisServer, token: str
) -> None:
    server = spawn("-redis", redis_server.address, "--jwt-secret", SECRET, "--jwt-leeway", "0")
    short = signed({"sub": token, "exp": int(time.time()) + 1})
    long = signed({"sub": token, "exp": int(time.time()) + 600})
    async with websocket(server.ws_url(short)) as expiring, websocket(server.ws_url(long)) as ws:
        with pytest.raises(ConnectionClosed):
            await receive(expiring, timeout=3)
        redis_server.publish(f"example.{token}", "still here")
        assert await receive(ws) == b"still here"
    metrics = httpx.get(f"{server.url}/metrics", timeout=5).text
    assert "wspush_expired_clients_disconnected_total 1.0" in metrics


# -- the timer -----------------------------------------------------------------------------


async def test_items_expire_in_order_once_each_and_forgotten_ones_never() -> None:
    expired: list[int] = []
    timer: ExpiryTimer[int] = ExpiryTimer(expired.append)
    start = time.time()
    entries = {n: timer.add(start + (n % 10) * 0.02, n) for n in range(200)}
    for n in range(0, 200, 2):
        timer.forget(entries[n])
    timer.forget(entries[0])  # twice is harmless
    assert len(timer) == 100
    await asyncio.sleep(0.4)
    assert sorted(expired) == list(range(1, 200, 2))
    assert expired == sorted(expired, key=lambda n: (n % 10, n))
    assert len(timer) == 0


async def test_one_loop_timer_serves_every_item() -> None:
    loop = asyncio.get_running_loop()
    before = len(loop._scheduled)  # type: ignore[attr-defined]
    timer: ExpiryTimer[int] = ExpiryTimer(lambda n: None)
    for n in range(1000):
        timer.add(time.time() + 60 + n, n)
    assert len(loop._scheduled) - before == 1  # type: ignore[attr-defined]
    timer.close()


async def test_forgotten_entries_are_compacted_away() -> None:
    timer: ExpiryTimer[int] = ExpiryTimer(lambda n: None)
    entries = [timer.add(time.time() + 60, n) for n in range(1000)]
    for entry in entries[:900]:
        timer.forget(entry)
    assert len(timer) == 100
    assert len(timer._heap) < 1000 // 2
    timer.close()


async def test_a_wall_clock_jump_is_noticed_within_max_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(expiry, "MAX_WAIT", 0.05)
    skew = [0.0]
    expired: list[str] = []
    timer: ExpiryTimer[str] = ExpiryTimer(expired.append, clock=lambda: time.time() + skew[0])
    timer.add(time.time() + 3600, "an hour from now")
    skew[0] = 3600.0  # the wall clock jumps an hour ahead
    await asyncio.sleep(0.2)
    assert expired == ["an hour from now"]


async def test_the_hub_closes_an_expired_subscription_saying_why_and_forgets_departed_ones() -> (
    None
):
    hub = Hub(15, 10, Stats())
    expiring = hub.subscribe(b"alice", Transport.SSE, expires=time.time() + 0.05)
    departed = hub.subscribe(b"bob", Transport.WEBSOCKET, expires=time.time() + 0.05)
    hub.unsubscribe(departed)
    assert len(hub.expiries) == 1
    await asyncio.sleep(0.2)
    assert expiring.closing
    assert (expiring.close_reason.code, expiring.close_reason.reason) == (1008, "token expired")
    assert expiring.close_reason.sse == EXPIRED_EVENT
    assert expiring.queue.get_nowait() is None  # the endpoint's cue to close
    assert not departed.closing
    assert hub.stats.expired_clients_disconnected == 1
