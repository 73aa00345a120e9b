"""The publisher helpers deliver through a real wspush, whatever the message type."""

from __future__ import annotations

import json

import pytest
import redis
import redis.asyncio as aioredis

import wspush
from tests.clients import receive, websocket
from tests.conftest import RedisServer, Wspush
from wspush.publish import channel_for, encode_message

pytestmark = pytest.mark.anyio


def test_messages_are_encoded_as_wspush_delivers_them() -> None:
    assert encode_message(b"\xff raw") == b"\xff raw"
    assert encode_message("caf\u00e9") == "caf\u00e9".encode()
    assert json.loads(encode_message({"id": 42, "tags": ["a"]})) == {"id": 42, "tags": ["a"]}
    assert channel_for("Foo") == b"example.Foo"
    assert channel_for(b"Foo", prefix="app.") == b"app.Foo"
    with pytest.raises(ValueError, match="empty"):
        channel_for("")


async def test_sync_and_async_helpers_reach_connected_clients(
    relay: Wspush, redis_server: RedisServer, token: str
) -> None:
    async with websocket(relay.ws_url(token)) as ws:
        with redis.Redis(port=redis_server.port) as client:
            assert wspush.publish(client, token, {"n": 1}) == 1
        async with aioredis.Redis(port=redis_server.port) as async_client:
            assert await wspush.apublish(async_client, token, "two") == 1
        assert json.loads(await receive(ws)) == {"n": 1}
        assert await receive(ws) == b"two"
