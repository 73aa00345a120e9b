"""The relay seen from its clients: real `python -m wspush`, real Redis, real sockets."""

from __future__ import annotations

import asyncio
import base64
import socket
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.clients import RawWebSocket, SSEClient, receive, websocket
from tests.conftest import RedisServer, Wspush, free_port, wait_until
from wspush import sign_token

pytestmark = [pytest.mark.anyio, pytest.mark.both_servers]

MIB = 1024 * 1024


def stats(expvar_port: int) -> dict[str, int]:
    return httpx.get(f"http://127.0.0.1:{expvar_port}/debug/vars", timeout=5).json()["wspush"]  # type: ignore[no-any-return]


# -- routing ---------------------------------------------------------------------------


async def test_a_message_reaches_every_client_of_its_token_on_both_transports(
    relay: Wspush, redis_server: RedisServer, token: str
) -> None:
    async with (
        websocket(relay.ws_url(token)) as ws1,
        websocket(relay.ws_url(token, "/any/path")) as ws2,
        SSEClient(f"{relay.url}/sse?token={token}") as sse,
    ):
        assert redis_server.publish(f"example.{token}", "hello") == 1
        assert await receive(ws1) == b"hello"
        assert await receive(ws2) == b"hello"
        assert await sse.wait_for(b"data:hello\n\n")


async def test_other_tokens_and_unprefixed_channels_reach_nobody(
    relay: Wspush, redis_server: RedisServer, token: str
) -> None:
    async with (
        websocket(relay.ws_url(token)) as ws,
        SSEClient(f"{relay.url}/sse?token={token}") as sse,
    ):
        redis_server.publish(f"example.{token}x", "other token")
        redis_server.publish(token, "no prefix")
        redis_server.publish(f"other.{token}", "other prefix")
        redis_server.publish(f"example.{token}", "mine")
        assert await receive(ws) == b"mine"
        body = await sse.wait_for(b"data:mine\n\n")
        assert body == b"data:mine\n\n"


async def test_the_token_is_url_decoded(relay: Wspush, redis_server: RedisServer) -> None:
    async with SSEClient(f"{relay.url}/sse?token=a%20b+c%2Fd") as sse:
        redis_server.publish("example.a b c/d", "decoded")
        await sse.wait_for(b"data:decoded\n\n")


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/sse", {}),
        ("/anything/sse", {}),
        ("/", {"Accept": "text/event-stream"}),
        ("/deep/path", {"Accept": "text/html, text/event-stream;q=0.9"}),
    ],
)
async def test_sse_is_chosen_by_path_suffix_or_accept_header(
    relay: Wspush, redis_server: RedisServer, token: str, path: str, headers: dict[str, str]
) -> None:
    async with SSEClient(f"{relay.url}{path}?token={token}", headers) as sse:
        assert sse.status == 200
        assert sse.response is not None
        assert sse.response.headers["content-type"].startswith("text/event-stream")
        redis_server.publish(f"example.{token}", "sse")
        await sse.wait_for(b"data:sse\n\n")


async def test_sse_sends_the_headers_proxies_need(relay: Wspush, token: str) -> None:
    async with SSEClient(f"{relay.url}/sse?token={token}") as sse:
        assert sse.response is not None
        assert sse.response.headers["cache-control"] == "no-cache"
        assert sse.response.headers["x-accel-buffering"] == "no"
        assert sse.response.headers["access-control-allow-origin"] == "*"


def test_ping_answers_200_with_cors(relay: Wspush) -> None:
    response = httpx.get(f"{relay.url}/ping", timeout=5)
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["access-control-allow-origin"] == "*"


def test_ready_answers_200_while_subscribed(relay: Wspush) -> None:
    assert httpx.get(f"{relay.url}/ready", timeout=5).status_code == 200


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])
@pytest.mark.parametrize("path", ["/", "/sse?token=x", "/ping"])
def test_other_methods_get_405_allow_get(
    relay: Wspush, method: str, path: str, expvar_port: int
) -> None:
    refused = stats(expvar_port)["refused_method"]
    response = httpx.request(method, relay.url + path, timeout=5)
    assert response.status_code == 405
    assert stats(expvar_port)["refused_method"] == refused + 1
    assert response.headers["allow"] == "GET"
    assert response.headers["access-control-allow-origin"] == "*"


def test_a_plain_get_on_a_websocket_path_is_426(relay: Wspush) -> None:
    response = httpx.get(f"{relay.url}/?token=abc", timeout=5)
    assert response.status_code == 426
    assert response.headers["upgrade"] == "websocket"
    assert response.headers["access-control-allow-origin"] == "*"


# -- tokens ------------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["", "?token=", "?token=" + "a" * 65, "?token=%zz", "?x=1"])
def test_sse_with_a_bad_token_is_400(relay: Wspush, query: str) -> None:
    response = httpx.get(f"{relay.url}/sse{query}", timeout=5)
    assert response.status_code == 400
    assert response.headers["access-control-allow-origin"] == "*"


@pytest.mark.parametrize("query", ["", "?token=", "?token=" + "a" * 65])
async def test_websocket_with_a_bad_token_is_refused_with_400(relay: Wspush, query: str) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with websocket(f"ws://127.0.0.1:{relay.port}/{query}"):
            pass
    assert refused.value.response.status_code == 400


async def test_a_64_byte_token_is_accepted(relay: Wspush, redis_server: RedisServer) -> None:
    token = "k" * 64
    async with websocket(relay.ws_url(token)) as ws:
        redis_server.publish(f"example.{token}", "long")
        assert await receive(ws) == b"long"


async def test_with_a_key_only_signed_tokens_connect(
    spawn: Callable[..., Wspush], redis_server: RedisServer
) -> None:
    signed = "dXNlcjQyQ_HzBUMkUrdGPFTb3Gs5qQ"  # "user42" signed with key "secret"
    server = spawn("-redis", redis_server.address, "-hmac", "c2VjcmV0")
    async with (
        websocket(server.ws_url(signed)) as ws,
        SSEClient(f"{server.url}/sse?token={signed}") as sse,
    ):
        redis_server.publish(f"example.{signed}", "signed")
        assert await receive(ws) == b"signed"
        await sse.wait_for(b"data:signed\n\n")
    assert httpx.get(f"{server.url}/sse?token=dXNlcjQy", timeout=5).status_code == 400
    with pytest.raises(InvalidStatus) as refused:
        async with websocket(server.ws_url("dXNlcjQyiYUQ5Zq15gFd6plvsLWlXA")):
            pass
    assert refused.value.response.status_code == 400
    assert "signature" in server.log()


async def test_rotated_keys_both_verify_and_sha256_is_an_option(
    spawn: Callable[..., Wspush], redis_server: RedisServer
) -> None:
    new, old = b"new-secret", b"secret"
    keys = ",".join(base64.urlsafe_b64encode(k).rstrip(b"=").decode() for k in (new, old))
    server = spawn("-redis", redis_server.address, "-hmac", keys)
    for key in (new, old):
        token = sign_token(key, b"user42")
        async with websocket(server.ws_url(token)) as ws:
            redis_server.publish(f"example.{token}", "rotated")
            assert await receive(ws) == b"rotated"
    sha = spawn("-redis", redis_server.address, "-hmac", keys, "--hmac-digest", "sha256")
    async with SSEClient(f"{sha.url}/sse?token={sign_token(new, b'u', 'sha256')}") as sse:
        assert sse.status == 200
    md5_token = sign_token(new, b"u")
    assert httpx.get(f"{sha.url}/sse?token={md5_token}", timeout=5).status_code == 400


async def test_ws_origins_keep_other_sites_from_opening_websockets(
    spawn: Callable[..., Wspush], redis_server: RedisServer, token: str
) -> None:
    server = spawn("-redis", redis_server.address, "--ws-origins", "https://app.example")
    async with websocket(server.ws_url(token), origin="https://app.example") as ws:  # type: ignore[arg-type]
        redis_server.publish(f"example.{token}", "same site")
        assert await receive(ws) == b"same site"
    for origin in ("https://evil.example", None):
        with pytest.raises(InvalidStatus) as refused:
            async with websocket(server.ws_url(token), origin=origin):  # type: ignore[arg-type]
                pass
        assert refused.value.response.status_code == 403
    assert "origin not allowed" in server.log()


# -- limits ------------------------------------------------------------------------------


async def test_the_16th_connection_on_a_token_is_refused_with_429(
    relay: Wspush, redis_server: RedisServer, token: str, expvar_port: int
) -> None:
    refused_before = stats(expvar_port)["refused_token_limit"]
    sockets = [websocket(relay.ws_url(token)) for _ in range(8)]
    streams = [SSEClient(f"{relay.url}/sse?token={token}") for _ in range(7)]
    opened = [await ws.__aenter__() for ws in sockets]
    for sse in streams:
        await sse.__aenter__()
    try:
        assert all(sse.status == 200 for sse in streams)
        with pytest.raises(InvalidStatus) as refused_ws:
            async with websocket(relay.ws_url(token)):
                pass
        assert refused_ws.value.response.status_code == 429
        refused_sse = httpx.get(f"{relay.url}/sse?token={token}", timeout=5)
        assert refused_sse.status_code == 429
        assert stats(expvar_port)["refused_token_limit"] == refused_before + 2
        assert "429" in relay.log()
        # The fifteen that got in still receive.
        redis_server.publish(f"example.{token}", "all fifteen")
        for ws in opened:
            assert await receive(ws) == b"all fifteen"
        for sse in streams:
            await sse.wait_for(b"data:all fifteen\n\n")
    finally:
        for sse in streams:
            await sse.__aexit__(None, None, None)
        for cm in sockets:
            await cm.__aexit__(None, None, None)
    # Leaving frees the places.
    await asyncio.sleep(0.3)
    async with websocket(relay.ws_url(token)) as ws:
        redis_server.publish(f"example.{token}", "again")
        assert await receive(ws) == b"again"


async def test_past_max_connections_new_clients_get_503_with_retry_after(
    spawn: Callable[..., Wspush], redis_server: RedisServer, token: str
) -> None:
    server = spawn("-redis", redis_server.address, "--max-connections", "2")
    async with websocket(server.ws_url(token)), SSEClient(f"{server.url}/sse?token={token}"):
        refused = httpx.get(f"{server.url}/sse?token={token}2", timeout=5)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "5"
        with pytest.raises(InvalidStatus) as refused_ws:
            async with websocket(server.ws_url(token + "3")):
                pass
        assert refused_ws.value.response.status_code == 503
    await asyncio.sleep(0.3)
    async with websocket(server.ws_url(token)) as ws:  # places are given back
        redis_server.publish(f"example.{token}", "room again")
        assert await receive(ws) == b"room again"


# Documentation addresses (RFC 5737): they only ever appear inside a header here.
CLIENT_A, CLIENT_B = "203.0.113.7", "198.51.100.9"


@pytest.mark.parametrize("trusted", [True, False])
async def test_max_per_ip_counts_the_forwarded_address_only_from_trusted_proxies(
    spawn: Callable[..., Wspush], redis_server: RedisServer, token: str, trusted: bool
) -> None:
    proxies = "127.0.0.1" if trusted else ""
    server = spawn(
        "-redis", redis_server.address, "--max-per-ip", "2", "--trusted-proxies", proxies
    )
    via = {"X-Forwarded-For": CLIENT_A}
    async with (
        websocket(server.ws_url(token), additional_headers=via),
        SSEClient(f"{server.url}/sse?token={token}", via),
    ):
        third_from_a = httpx.get(f"{server.url}/sse?token={token}", headers=via, timeout=5)
        assert third_from_a.status_code == 429
        other = {"X-Forwarded-For": CLIENT_B}
        if trusted:  # a different client behind the same proxy still gets in
            async with SSEClient(f"{server.url}/sse?token={token}", other) as from_b:
                assert from_b.status == 200
        else:  # untrusted headers are ignored: everyone is 127.0.0.1
            from_b = httpx.get(f"{server.url}/sse?token={token}", headers=other, timeout=5)
            assert from_b.status_code == 429


@pytest.mark.parametrize("stalled_transport", ["ws", "sse"])
async def test_a_client_that_does_not_read_is_dropped_then_disconnected_not_the_others(
    spawn: Callable[..., Wspush], redis_server: RedisServer, token: str, stalled_transport: str
) -> None:
    expvar = free_port()
    server = spawn(
        "-redis", redis_server.address, "--queue-size", "4", "--max-drops", "20",
        "-expvar", f"127.0.0.1:{expvar}",
    )  # fmt: skip
    # A raw socket that never reads: kernel buffers fill, then its queue, then it drops.
    if stalled_transport == "ws":
        stalled = await RawWebSocket.open(server.port, f"/?token={token}")
        writer = stalled.writer
    else:
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(f"GET /sse?token={token} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    try:
        async with websocket(server.ws_url(token), max_size=None) as healthy:
            big = b"x" * (256 * 1024)
            seq = 0
            while stats(expvar)["slow_clients_disconnected"] == 0:
                assert seq < 400, "the stalled client was never disconnected"
                redis_server.publish(f"example.{token}", b"%d " % seq + big)
                message = await receive(healthy)
                assert isinstance(message, bytes)
                assert message.startswith(b"%d " % seq)
                seq += 1
            wait_until(lambda: stats(expvar)["connections_open"] == 1, 5, "the kick to finish")
            redis_server.publish(f"example.{token}", "still fine")
            assert await receive(healthy) == b"still fine"
    finally:
        writer.close()
    counters = stats(expvar)
    assert counters["dropped_queue_full"] >= 20
    assert "does not read" in server.log()
    assert "ERROR" not in server.log()  # a slow client is not a server error


# -- framing -----------------------------------------------------------------------------


async def test_sse_framing_is_byte_for_byte_go_framing(
    relay: Wspush, redis_server: RedisServer, token: str
) -> None:
    async with SSEClient(f"{relay.url}/sse?token={token}") as sse:
        for message in ["one", "two\nlines", "", "a\n\nb", " leading space", "last"]:
            redis_server.publish(f"example.{token}", message)
        body = await sse.wait_for(b"data:last\n\n")
    assert body == (
        b"data:one\n\n"
        b"data:two\ndata:lines\n\n"
        b"data:a\ndata:\ndata:b\n\n"
        b"data:  leading space\n\n"
        b"data:last\n\n"
    )
    assert sse.events() == ["one", "two\nlines", "a\n\nb", " leading space", "last"]


async def test_websocket_sends_binary_frames_by_default_including_empty_messages(
    relay: Wspush, redis_server: RedisServer, token: str
) -> None:
    async with websocket(relay.ws_url(token)) as ws:
        redis_server.publish(f"example.{token}", "text")
        redis_server.publish(f"example.{token}", "")
        assert await receive(ws) == b"text"
        assert await receive(ws) == b""


async def test_a_non_utf8_message_is_skipped_on_sse_and_the_stream_goes_on(
    relay: Wspush, redis_server: RedisServer, token: str, expvar_port: int
) -> None:
    skipped_before = stats(expvar_port)["skipped_invalid_utf8"]
    async with (
        websocket(relay.ws_url(token)) as ws,
        SSEClient(f"{relay.url}/sse?token={token}") as sse,
    ):
        redis_server.publish(f"example.{token}", b"\xff\xfe not utf-8")
        redis_server.publish(f"example.{token}", "after")
        assert await receive(ws) == b"\xff\xfe not utf-8"
        assert await receive(ws) == b"after"
        assert await sse.wait_for(b"data:after\n\n") == b"data:after\n\n"
    assert stats(expvar_port)["skipped_invalid_utf8"] == skipped_before + 1
    assert "not valid UTF-8" in relay.log()


@pytest.mark.parametrize(
    ("frame", "expected"),
    [("text", ["ok", None]), ("auto", ["ok", b"\xff binary"]), ("binary", [b"ok", b"\xff binary"])],
)
async def test_websocket_frame_type_option(
    spawn: Callable[..., Wspush],
    redis_server: RedisServer,
    token: str,
    frame: str,
    expected: list[str | bytes | None],
) -> None:
    server = spawn("-redis", redis_server.address, "--ws-frame", frame)
    async with websocket(server.ws_url(token)) as ws:
        redis_server.publish(f"example.{token}", "ok")
        redis_server.publish(f"example.{token}", b"\xff binary")
        redis_server.publish(f"example.{token}", "end")
        received = [await receive(ws) for _ in range(3 if expected[1] is not None else 2)]
    assert received[:-1] == [e for e in expected if e is not None]
    assert received[-1] in ("end", b"end")


async def test_a_1_mib_message_arrives_whole_on_both_transports(
    relay: Wspush, redis_server: RedisServer, token: str
) -> None:
    payload = ("0123456789abcdef" * (MIB // 16)).encode()
    async with (
        websocket(relay.ws_url(token), max_size=2 * MIB) as ws,
        SSEClient(f"{relay.url}/sse?token={token}") as sse,
    ):
        redis_server.publish(f"example.{token}", payload)
        assert await receive(ws, timeout=10) == payload
        body = await sse.wait_for(b"\n\n", timeout=10)
    assert body == b"data:" + payload + b"\n\n"


# -- client frames -----------------------------------------------------------------------


async def test_client_frames_are_read_and_discarded(
    relay: Wspush, redis_server: RedisServer, token: str
) -> None:
    async with websocket(relay.ws_url(token)) as ws:
        for _ in range(50):
            await ws.send("chatter")
        await ws.send(b"\x00" * 4000)
        redis_server.publish(f"example.{token}", "still here")
        assert await receive(ws) == b"still here"


async def test_a_flood_of_client_frames_and_pings_does_not_starve_delivery(
    relay: Wspush, redis_server: RedisServer, token: str
) -> None:
    async with websocket(relay.ws_url(token)) as flooder, websocket(relay.ws_url(token)) as other:
        for _ in range(2000):
            await flooder.send("spam")
            await flooder.ping()
        started = time.monotonic()
        redis_server.publish(f"example.{token}", "through the flood")
        assert await receive(other) == b"through the flood"
        assert await receive(flooder) == b"through the flood"
        assert time.monotonic() - started < 1.0


async def test_an_oversized_client_frame_closes_with_1009(relay: Wspush, token: str) -> None:
    async with websocket(relay.ws_url(token)) as ws:
        await ws.send(b"x" * 5000)
        with pytest.raises(ConnectionClosed) as closed:
            await receive(ws)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009


async def test_a_closed_client_leaves_the_hub_at_once(
    relay: Wspush, token: str, expvar_port: int
) -> None:
    before = stats(expvar_port)["connections_open"]
    async with websocket(relay.ws_url(token)), SSEClient(f"{relay.url}/sse?token={token}"):
        assert stats(expvar_port)["connections_open"] == before + 2
    await asyncio.sleep(0.5)
    assert stats(expvar_port)["connections_open"] == before


# -- heartbeats --------------------------------------------------------------------------


async def test_heartbeats_without_payload_are_sse_ping_lines_and_websocket_pings(
    spawn: Callable[..., Wspush], redis_server: RedisServer, token: str
) -> None:
    server = spawn("-redis", redis_server.address, "--ping-interval", "0.5")
    raw = await RawWebSocket.open(server.port, f"/?token={token}")
    async with SSEClient(f"{server.url}/sse?token={token}") as sse:
        await sse.wait_for(b"ping:\n\nping:\n\n", timeout=5)
        opcode, _ = await raw.frame(timeout=5)
        assert opcode == 0x9  # a protocol-level ping
        assert sse.events() == []  # EventSource ignores the unknown 'ping' field
    raw.close()


async def test_heartbeats_with_a_payload_are_messages_on_both_transports(
    spawn: Callable[..., Wspush], redis_server: RedisServer, token: str
) -> None:
    server = spawn("-redis", redis_server.address, "--ping-interval", "0.5", "-ping", "hb")
    async with (
        websocket(server.ws_url(token)) as ws,
        SSEClient(f"{server.url}/sse?token={token}") as sse,
    ):
        assert await receive(ws, timeout=5) == b"hb"
        await sse.wait_for(b"data:hb\n\n", timeout=5)


# -- CORS --------------------------------------------------------------------------------


def test_a_cors_allow_list_echoes_only_listed_origins(
    spawn: Callable[..., Wspush], redis_server: RedisServer
) -> None:
    server = spawn(
        "-redis", redis_server.address, "--cors-origins", "https://a.example,https://b.example"
    )
    listed = httpx.get(f"{server.url}/ping", headers={"Origin": "https://b.example"}, timeout=5)
    assert listed.headers["access-control-allow-origin"] == "https://b.example"
    assert listed.headers["vary"] == "Origin"
    unlisted = httpx.get(
        f"{server.url}/ping", headers={"Origin": "https://evil.example"}, timeout=5
    )
    assert "access-control-allow-origin" not in unlisted.headers


# -- statistics --------------------------------------------------------------------------


async def test_expvar_serves_the_go_counters(
    relay: Wspush, redis_server: RedisServer, token: str, expvar_port: int
) -> None:
    before = stats(expvar_port)
    async with websocket(relay.ws_url(token)) as ws:
        redis_server.publish(f"example.{token}", "counted")
        await receive(ws)
    after = stats(expvar_port)
    assert after["sessions_seen"] >= before["sessions_seen"] + 1
    assert after["messages_seen"] >= before["messages_seen"] + 1
    assert after["successful_deliveries"] >= before["successful_deliveries"] + 1
    assert after["redis_subscribed"] == 1


async def test_a_burst_arrives_complete_and_in_order_on_both_transports(
    spawn: Callable[..., Wspush], redis_server: RedisServer, token: str
) -> None:
    """Direct writes, batched writes and the queued backlog must never reorder messages."""
    server = spawn("-redis", redis_server.address, "--queue-size", "10000")
    count = 3000
    async with (
        websocket(server.ws_url(token)) as ws,
        SSEClient(f"{server.url}/sse?token={token}") as sse,
    ):
        with redis_server.client() as client, client.pipeline(transaction=False) as pipe:
            for seq in range(count):
                pipe.publish(f"example.{token}", f"{seq} " + "p" * (seq % 700))
            pipe.execute()
        received = [await receive(ws) for _ in range(count)]
        await sse.wait_for(f"data:{count - 1} ".encode(), timeout=15)
    assert [int(m.split(b" ")[0]) for m in received] == list(range(count))  # type: ignore[union-attr]
    assert [int(e.split(" ")[0]) for e in sse.events()] == list(range(count))


async def test_websocket_compression_is_off_by_default_and_on_by_option(
    spawn: Callable[..., Wspush], relay: Wspush, redis_server: RedisServer, token: str
) -> None:
    async with websocket(relay.ws_url(token)) as plain:
        assert plain.response is not None
        assert "permessage-deflate" not in plain.response.headers.get(
            "Sec-WebSocket-Extensions", ""
        )
    server = spawn("-redis", redis_server.address, "--ws-compression")
    async with websocket(server.ws_url(token)) as compressed:
        assert compressed.response is not None
        assert "permessage-deflate" in compressed.response.headers["Sec-WebSocket-Extensions"]
        redis_server.publish(f"example.{token}", "squeeze " * 100)
        assert await receive(compressed) == b"squeeze " * 100


# -- bad input ---------------------------------------------------------------------------

query_parts = st.sampled_from(
    ["token=", "token=a", "token=%zz", "token=%E2%9C", "tok%65n=b", "token=a;b", "&", "=", "%",
     "+", "token=" + "x" * 64, "token=" + "y" * 65, "token=%00", "token=\u00e9", "a=1"]
)  # fmt: skip


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(parts=st.lists(query_parts, max_size=8), noise=st.text(max_size=40))
def test_any_query_string_gets_200_or_400_never_an_error(
    relay: Wspush, parts: list[str], noise: str
) -> None:
    query = "&".join(parts) + quote(noise, safe="=&%;+")
    with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as conn:
        conn.sendall(f"GET /sse?{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        status_line = conn.recv(64).split(b"\r\n")[0]
    assert status_line in (b"HTTP/1.1 200 OK", b"HTTP/1.1 400 Bad Request"), (query, status_line)


def test_a_10_kb_query_string_and_huge_or_repeated_accept_headers_are_answered(
    relay: Wspush,
) -> None:
    long_query = "token=" + "z" * 10_000
    assert httpx.get(f"{relay.url}/sse?{long_query}", timeout=5).status_code == 400
    huge_accept = {"Accept": "text/plain, " * 5_000 + "text/event-stream"}
    with httpx.stream("GET", f"{relay.url}/any?token=huge", headers=huge_accept, timeout=5) as r:
        assert r.status_code == 200
    repeated = [("Accept", "text/html"), ("Accept", "text/event-stream")]
    with httpx.stream("GET", f"{relay.url}/any?token=rep", headers=repeated, timeout=5) as r:
        assert r.status_code == 200
    assert httpx.get(f"{relay.url}/ping", timeout=5).status_code == 200


def test_a_request_without_host_is_answered(relay: Wspush) -> None:
    with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as conn:
        conn.sendall(b"GET /ping HTTP/1.0\r\n\r\n")
        assert conn.recv(64).startswith(b"HTTP/1.1 200")


async def test_a_channel_name_that_is_not_utf8_routes_to_its_percent_encoded_token(
    relay: Wspush, redis_server: RedisServer
) -> None:
    async with websocket(relay.ws_url("%FF%FEraw")) as ws:
        assert redis_server.publish(b"example.\xff\xferaw", "bytes all the way") == 1
        assert await receive(ws) == b"bytes all the way"


async def test_an_empty_channel_suffix_reaches_nobody(
    relay: Wspush, redis_server: RedisServer, token: str, expvar_port: int
) -> None:
    seen = stats(expvar_port)["messages_seen"]
    async with websocket(relay.ws_url(token)) as ws:
        redis_server.publish("example.", "to nobody")
        redis_server.publish(f"example.{token}", "to me")
        assert await receive(ws) == b"to me"
    assert stats(expvar_port)["messages_seen"] == seen + 2


async def test_a_message_over_the_maximum_size_is_dropped_and_counted(
    spawn: Callable[..., Wspush], tmp_path: Path, token: str
) -> None:
    # Redis's default output buffer limit (32 MB) would cut any subscriber of a 100 MB
    # message before it is read; lift it so wspush's own limit is what is tested.
    redis = RedisServer(
        tmp_path / "big", None, "--client-output-buffer-limit", "pubsub 0 0 0"
    ).start()
    expvar = free_port()
    try:
        server = spawn(
            "-redis", redis.address, "--max-message-size", str(2 * MIB),
            "-expvar", f"127.0.0.1:{expvar}",
        )  # fmt: skip
        async with websocket(server.ws_url(token), max_size=None) as ws:
            redis.publish(f"example.{token}", b"x" * (2 * MIB))  # at the limit: sent
            redis.publish(f"example.{token}", b"y" * (100 * MIB))  # 100 MB: dropped
            redis.publish(f"example.{token}", "after")
            assert await receive(ws, timeout=15) == b"x" * (2 * MIB)
            assert await receive(ws, timeout=15) == b"after"
        assert stats(expvar)["dropped_too_large"] == 1
        assert "larger than --max-message-size" in server.log()
    finally:
        redis.kill()


async def test_a_burst_of_100k_messages_to_one_token_is_survived(
    spawn: Callable[..., Wspush], redis_server: RedisServer, token: str, server: str
) -> None:
    expvar_port = free_port()
    # Over plain ASGI a connection's queue is all that holds a burst (the engine also
    # writes everything of one Redis read at once): most of it is dropped, and with the
    # default --max-drops the client would be cut as too slow, which is not the point.
    no_kick = ["--max-drops", "0"] if server == "uvicorn" else []
    relay = spawn("-redis", redis_server.address, "-expvar", f"127.0.0.1:{expvar_port}", *no_kick)
    before = stats(expvar_port)
    async with websocket(relay.ws_url(token)) as ws, SSEClient(f"{relay.url}/sse?token={token}"):
        with redis_server.client() as client, client.pipeline(transaction=False) as pipe:
            for seq in range(100_000):
                pipe.publish(f"example.{token}", b"%d" % seq)
            pipe.execute()
        redis_server.publish(f"example.{token}", "end")
        async with asyncio.timeout(30):
            while await receive(ws, timeout=30) != b"end":
                pass
    after = stats(expvar_port)
    assert after["messages_seen"] - before["messages_seen"] == 100_001
    delivered = after["successful_deliveries"] - before["successful_deliveries"]
    dropped = sum(after[k] - before[k] for k in ("dropped_queue_full", "dropped_flood"))
    assert delivered + dropped == 2 * 100_001  # every delivery made or counted as lost


async def test_one_stalled_client_does_not_slow_a_hundred_healthy_ones_on_its_token(
    spawn: Callable[..., Wspush], redis_server: RedisServer, token: str
) -> None:
    server = spawn("-redis", redis_server.address, "--max-per-token", "101")
    stalled = await RawWebSocket.open(server.port, f"/?token={token}")
    healthy = [websocket(server.ws_url(token), max_size=None) for _ in range(100)]
    clients = [await h.__aenter__() for h in healthy]
    try:
        lags: list[float] = []
        big = b"x" * (64 * 1024)
        for seq in range(40):
            sent = time.monotonic()
            redis_server.publish(f"example.{token}", b"%d " % seq + big)
            for ws in clients:
                message = await receive(ws)
                assert isinstance(message, bytes)
                assert message.startswith(b"%d " % seq)
            lags.append(time.monotonic() - sent)
        # The stalled client stopped reading long ago (40 x 64 KiB > its socket buffers
        # plus queue): the healthy ones never waited for it.
        assert max(lags) < 1.0, lags
    finally:
        stalled.close()
        for h in healthy:
            await h.__aexit__(None, None, None)
