"""CORS: every answer the relay writes carries `Access-Control-Allow-Origin`, whichever
path writes it; WebSocket handshakes refused before the upgrade included."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest
from websockets.typing import Origin

from tests.clients import raw_request, websocket
from tests.conftest import SERVERS, RedisServer, Wspush
from wspush import sign_token

pytestmark = pytest.mark.anyio

KEY = b"k" * 16
ALLOWED_ORIGIN = b"Origin: https://app.example\r\n"


def signed(payload: str) -> str:
    return sign_token(KEY, payload.encode())


@pytest.fixture(params=SERVERS)
def guarded(
    request: pytest.FixtureRequest, spawn_on: Callable[..., Wspush], redis_server: RedisServer
) -> Wspush:
    """A relay with every WebSocket refusal in reach: signed tokens, one origin, one
    connection per token, two in all."""
    return spawn_on(
        request.param,
        redis=redis_server.address,
        hmac=base64.urlsafe_b64encode(KEY).decode().rstrip("="),
        ws_origins="https://app.example",
        max_per_token="1",
        max_connections="2",
    )


@pytest.mark.parametrize(
    "query",
    ["", "?token=", "?token=" + "a" * 65, "?token=unsigned", "?token=%zz"],
    ids=["missing", "empty", "too-long", "unsigned", "bad-escape"],
)
def test_a_websocket_refused_for_its_token_gets_400_with_cors(guarded: Wspush, query: str) -> None:
    answer = raw_request(guarded.port, f"/{query}", ALLOWED_ORIGIN, websocket=True)
    assert answer.status == 400
    assert answer.headers["access-control-allow-origin"] == "*"
    assert answer.closed


async def test_websocket_refusals_for_origin_token_limit_and_capacity_carry_cors(
    guarded: Wspush,
) -> None:
    first, second = signed("first"), signed("second")
    wrong_origin = raw_request(
        guarded.port, f"/?token={first}", b"Origin: https://evil.example\r\n", websocket=True
    )
    assert (wrong_origin.status, wrong_origin.headers["access-control-allow-origin"]) == (403, "*")
    origin = Origin("https://app.example")
    # Open (the relay subscribes them before its 101): the token's one, then the last one.
    async with websocket(guarded.ws_url(first), origin=origin):
        token_limit = raw_request(guarded.port, f"/?token={first}", ALLOWED_ORIGIN, websocket=True)
        async with websocket(guarded.ws_url(second), origin=origin):
            third = signed("third")
            capacity = raw_request(guarded.port, f"/?token={third}", ALLOWED_ORIGIN, websocket=True)
            # SSE refusals, as before: the same header from the same decision.
            sse = raw_request(guarded.port, f"/sse?token={third}")
    assert (token_limit.status, token_limit.headers["access-control-allow-origin"]) == (429, "*")
    assert (capacity.status, capacity.headers["access-control-allow-origin"]) == (503, "*")
    assert capacity.headers["retry-after"] == "5"
    assert (sse.status, sse.headers["access-control-allow-origin"]) == (503, "*")


@pytest.mark.parametrize("engine", SERVERS)
def test_an_allow_list_is_echoed_on_websocket_refusals_too(
    spawn_on: Callable[..., Wspush], redis_server: RedisServer, engine: str
) -> None:
    server = spawn_on(engine, redis=redis_server.address, cors_origins="https://a.example")
    listed = raw_request(server.port, "/", b"Origin: https://a.example\r\n", websocket=True)
    assert listed.status == 400
    assert listed.headers["access-control-allow-origin"] == "https://a.example"
    assert listed.headers["vary"] == "Origin"
    unlisted = raw_request(server.port, "/", b"Origin: https://b.example\r\n", websocket=True)
    assert unlisted.status == 400
    assert "access-control-allow-origin" not in unlisted.headers
