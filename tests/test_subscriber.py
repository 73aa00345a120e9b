"""The Redis side survives Redis: down at start, killed under clients, restarted."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from redis import Redis

from tests.clients import SSEClient, receive, websocket
from tests.conftest import RedisServer, Wspush, free_port, wait_until
from wspush.subscriber import pattern_for

pytestmark = [pytest.mark.anyio, pytest.mark.both_servers]


def test_the_pattern_matches_the_prefix_literally() -> None:
    assert pattern_for(b"example.") == b"example.*"
    assert pattern_for(b"a*b?[c]") == b"a\\*b\\?\\[c\\]*"
    assert pattern_for(b"") == b"*"


async def publish_until_received(
    redis: RedisServer, channel: str, ws_receive, timeout: float
) -> float:  # type: ignore[no-untyped-def]
    """Publish every 50 ms until a client gets it; returns the seconds it took."""
    started = time.monotonic()
    async with asyncio.timeout(timeout):
        while True:
            redis.publish(channel, "back")
            try:
                if await asyncio.wait_for(ws_receive(), 0.05) == b"back":
                    return time.monotonic() - started
            except TimeoutError:
                continue


async def test_redis_killed_and_restarted_under_connected_clients(
    spawn: Callable[..., Wspush], fresh_redis: RedisServer, token: str
) -> None:
    server = spawn("-redis", fresh_redis.address)
    async with (
        websocket(server.ws_url(token)) as ws,
        SSEClient(f"{server.url}/sse?token={token}") as sse,
    ):
        fresh_redis.publish(f"example.{token}", "before")
        assert await receive(ws) == b"before"
        await sse.wait_for(b"data:before\n\n")

        fresh_redis.kill()
        wait_until(lambda: server.status("/ready") == 503, 5, "/ready to report the outage")
        assert server.status("/ping") == 200
        await asyncio.sleep(1.5)  # several retries: the log must not grow per retry
        fresh_redis.start()

        took = await publish_until_received(fresh_redis, f"example.{token}", ws.recv, timeout=5)
        assert took < 2
        await sse.wait_for(b"data:back\n\n")
        assert not sse.ended.is_set()
    log = server.log()
    assert log.count("redis: ConnectionError") + log.count("redis: TimeoutError") == 1, log
    assert log.count("subscribed to 'example.*'") == 2


async def test_redis_down_at_start_then_up(
    spawn: Callable[..., Wspush],
    tmp_path,
    token: str,  # type: ignore[no-untyped-def]
) -> None:
    redis = RedisServer(tmp_path / "late", free_port())
    server = spawn("-redis", redis.address, ready=False)
    assert server.status("/ping") == 200
    assert server.status("/ready") == 503
    async with websocket(server.ws_url(token)) as ws:
        redis.start()
        try:
            server.wait_ready(timeout=5)
            await publish_until_received(redis, f"example.{token}", ws.recv, timeout=5)
        finally:
            redis.kill()


def test_ready_says_why_it_is_not_ready(spawn: Callable[..., Wspush]) -> None:
    server = spawn("-redis", f"127.0.0.1:{free_port()}", ready=False)
    response = httpx.get(f"{server.url}/ready", timeout=5)
    assert response.status_code == 503
    assert "redis" in response.text


async def test_a_unix_socket_redis_url_works(
    spawn: Callable[..., Wspush], tmp_path: Path, token: str
) -> None:
    socket_path = tmp_path / "redis.sock"
    redis = RedisServer(tmp_path / "unix", None, "--unixsocket", str(socket_path)).start()
    try:
        server = spawn("-redis", f"unix://{socket_path}")
        async with websocket(server.ws_url(token)) as ws:
            redis.publish(f"example.{token}", "over a unix socket")
            assert await receive(ws) == b"over a unix socket"
    finally:
        redis.kill()


async def test_client_kill_of_the_subscription_is_survived(
    spawn: Callable[..., Wspush], fresh_redis: RedisServer, token: str
) -> None:
    server = spawn("-redis", fresh_redis.address)
    async with websocket(server.ws_url(token)) as ws:
        with fresh_redis.client() as client:
            assert client.execute_command("CLIENT", "KILL", "TYPE", "pubsub") >= 1
        took = await publish_until_received(fresh_redis, f"example.{token}", ws.recv, timeout=5)
        assert took < 2
    assert "redis: ConnectionError" in server.log()


async def test_a_paused_redis_is_detected_and_replaced_once_it_answers(
    spawn: Callable[..., Wspush], fresh_redis: RedisServer, token: str
) -> None:
    """SIGSTOP keeps the TCP connection open but silent, like a half-open NAT entry."""
    server = spawn("-redis", fresh_redis.address, "--redis-health-interval", "0.5")
    assert fresh_redis.process is not None
    async with websocket(server.ws_url(token)) as ws:
        fresh_redis.process.send_signal(signal.SIGSTOP)
        try:
            wait_until(lambda: server.status("/ready") == 503, 5, "/ready to see the stall")
        finally:
            fresh_redis.process.send_signal(signal.SIGCONT)
        took = await publish_until_received(fresh_redis, f"example.{token}", ws.recv, timeout=10)
        assert took < 8
    assert "within 0.5s, reconnecting" in server.log()


def test_the_probe_channel_can_never_be_a_client_token() -> None:
    from wspush.hub import Hub
    from wspush.stats import Stats
    from wspush.subscriber import Subscriber
    from wspush.tokens import MAX_TOKEN_BYTES

    subscriber = Subscriber("redis://x:1", b"example.", Hub(15, 10, Stats()), Stats())
    assert subscriber.probe_channel.startswith(b"example.")
    assert len(subscriber.probe_channel) - len(b"example.") > MAX_TOKEN_BYTES


async def test_a_password_protected_redis_and_a_wrong_password(
    spawn: Callable[..., Wspush], tmp_path: Path, token: str
) -> None:
    redis = RedisServer(tmp_path / "auth", None, "--requirepass", "s3cret").start()
    try:
        wrong = spawn("-redis", f"redis://:nope@127.0.0.1:{redis.port}", ready=False)
        right = spawn("-redis", f"redis://:s3cret@127.0.0.1:{redis.port}")
        async with websocket(right.ws_url(token)) as ws:
            with Redis(port=redis.port, password="s3cret", socket_timeout=5) as client:
                client.publish(f"example.{token}", "authenticated")
            assert await receive(ws) == b"authenticated"
        await asyncio.sleep(2.5)  # several retries with the wrong password
        assert wrong.status("/ping") == 200
        assert wrong.status("/ready") == 503
        log = wrong.log()
        assert log.count("redis: AuthenticationError") == 1, log
        assert "s3cret" not in right.log()
        assert "nope" not in log
    finally:
        redis.kill()


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 made with the openssl command line, as a test CA."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


@pytest.mark.parametrize("trust", ["ca", "no-verify", "default"])
async def test_redis_over_tls(
    spawn: Callable[..., Wspush], tmp_path: Path, token: str, trust: str
) -> None:
    cert, key = self_signed_certificate(tmp_path)
    port = free_port()
    redis = RedisServer(
        tmp_path / "tls", free_port(), "--tls-port", str(port), "--tls-cert-file", str(cert),
        "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
    ).start()  # fmt: skip
    try:
        url = f"rediss://127.0.0.1:{port}"
        args = {
            "ca": ["-redis", f"{url}?ssl_ca_certs={cert}"],
            "no-verify": ["-redis", url, "--no-redis-tls-verify"],
            "default": ["-redis", url],
        }[trust]
        server = spawn(*args, ready=trust != "default")
        if trust == "default":  # a self-signed certificate is refused unless told otherwise
            await asyncio.sleep(2)
            assert server.status("/ready") == 503
            assert "SSL" in server.log() or "certificate" in server.log()
            return
        async with websocket(server.ws_url(token)) as ws:
            redis.publish(f"example.{token}", "over TLS")  # plain port of the same server
            assert await receive(ws) == b"over TLS"
    finally:
        redis.kill()


@pytest.mark.soak
@pytest.mark.timeout(300)
async def test_redis_down_for_a_minute_then_back(
    spawn: Callable[..., Wspush], fresh_redis: RedisServer, token: str
) -> None:
    server = spawn("-redis", fresh_redis.address)
    async with websocket(server.ws_url(token), ping_interval=None) as ws:
        fresh_redis.kill()
        await asyncio.sleep(60)
        assert server.status("/ready") == 503
        fresh_redis.start()
        took = await publish_until_received(fresh_redis, f"example.{token}", ws.recv, timeout=5)
        assert took < 2
    log = server.log()
    assert log.count("redis: ConnectionError") + log.count("redis: TimeoutError") == 1, log


@pytest.mark.parametrize(
    ("mode", "commands"),
    [("pattern", ("+psubscribe", "+punsubscribe")), ("exact", ("+subscribe", "+unsubscribe"))],
)
async def test_an_acl_user_with_only_pubsub_rights(
    spawn: Callable[..., Wspush], tmp_path: Path, token: str, mode: str, commands: tuple[str, str]
) -> None:
    """wspush needs no write access: a user limited to the prefix's channels is enough
    (the users SECURITY.md and docs/scaling.md give)."""
    redis = RedisServer(
        tmp_path / "acl", None,
        "--user", "relay", "on", ">relay-pw", "resetchannels", "&example.*",
        *commands, "+ping", "+publish", "+client|setname",
    ).start()  # fmt: skip
    try:
        url = f"redis://relay:relay-pw@127.0.0.1:{redis.port}"
        server = spawn("-redis", url, "--subscribe-mode", mode)
        async with websocket(server.ws_url(token)) as ws:
            redis.publish(f"example.{token}", "via an ACL user")
            assert await receive(ws) == b"via an ACL user"
        assert "relay-pw" not in server.log()
        assert "ERROR" not in server.log()
    finally:
        redis.kill()
