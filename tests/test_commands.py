"""`wspush keygen | token | publish | check`, run as real commands against real Redis
and a real relay."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable

import jwt
import pytest

from tests.clients import SSEClient, receive, websocket
from tests.conftest import RedisServer, Wspush, free_port
from tests.jwts import SECRET
from wspush import sign_jwt
from wspush.settings import decode_key
from wspush.tokens import verify

pytestmark = pytest.mark.anyio


def wspush(
    *args: str, stdin: bytes = b"", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "wspush", *args],
        input=stdin,
        capture_output=True,
        timeout=30,
        env=env,
    )


def test_keygen_prints_a_fresh_key_the_server_accepts() -> None:
    first = wspush("keygen").stdout.decode().strip()
    second = wspush("keygen").stdout.decode().strip()
    assert first != second
    assert len(decode_key(first)) == 32
    assert len(decode_key(wspush("keygen", "--bytes", "16").stdout.decode().strip())) == 16


async def test_token_signs_with_the_configured_key_and_the_relay_lets_it_in(
    spawn: Callable[..., Wspush], redis_server: RedisServer
) -> None:
    key = wspush("keygen").stdout.decode().strip()
    result = wspush("token", "-hmac", key, "user-42")
    assert result.returncode == 0, result.stderr
    token = result.stdout.decode().strip()
    assert verify(token.encode(), decode_key(key))
    server = spawn("-redis", redis_server.address, "-hmac", key)
    async with websocket(server.ws_url(token)) as ws:
        redis_server.publish(f"example.{token}", "signed")
        assert await receive(ws) == b"signed"


async def test_token_jwt_prints_a_jwt_the_relay_lets_in_until_it_expires(
    spawn: Callable[..., Wspush], redis_server: RedisServer
) -> None:
    env = {**os.environ, "WSPUSH_JWT_SECRET": SECRET, "WSPUSH_JWT_AUDIENCE": "pages"}
    before = int(time.time())
    result = wspush("token", "--jwt", "--sub", "alice", "--ttl", "600", env=env)
    assert result.returncode == 0, result.stderr
    token = result.stdout.decode().strip()
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="pages")
    assert claims["sub"] == "alice"
    assert before + 600 <= claims["exp"] <= int(time.time()) + 600
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    server = spawn("-redis", redis_server.address, env=env)
    async with websocket(server.ws_url(token)) as ws:
        redis_server.publish("example.alice", "for alice")
        assert await receive(ws) == b"for alice"


def test_token_jwt_needs_a_secret_and_a_sub() -> None:
    env = {"PATH": "/usr/bin:/bin"}
    no_secret = wspush("token", "--jwt", "--sub", "alice", env=env)
    assert no_secret.returncode == 1
    assert b"no JWT secret configured" in no_secret.stderr
    no_sub = wspush("token", "--jwt", "--jwt-secret", SECRET, env=env)
    assert no_sub.returncode == 1
    assert b"--sub" in no_sub.stderr
    too_long = wspush(
        "token", "--jwt", "--sub", "a", "--ttl", "7200", "--jwt-secret", SECRET,
        "--jwt-max-age", "3600", env=env,
    )  # fmt: skip
    assert too_long.returncode == 1
    assert b"longer than --jwt-max-age 3600" in too_long.stderr


def test_sign_jwt_is_the_python_helper() -> None:
    token = sign_jwt(SECRET, "bob", 60)
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "bob"
    assert claims["exp"] - claims["iat"] in (59, 60)
    with pytest.raises(ValueError, match="ttl"):
        sign_jwt(SECRET, "bob", 0)


def test_token_without_a_key_says_how_to_get_one() -> None:
    result = wspush("token", "user-42", env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 1
    assert b"no key configured" in result.stderr
    assert b"wspush keygen" in result.stderr


async def test_publish_reaches_clients_from_an_argument_or_standard_input(
    relay: Wspush, redis_server: RedisServer, token: str
) -> None:
    async with (
        websocket(relay.ws_url(token)) as ws,
        SSEClient(f"{relay.url}/sse?token={token}") as sse,
    ):
        result = wspush("publish", "-redis", redis_server.address, token, "from argv")
        assert result.returncode == 0, result.stderr
        assert b"1 subscriber" in result.stdout
        assert await receive(ws) == b"from argv"
        piped = wspush("publish", "--redis", redis_server.url, token, "-", stdin=b"line 1\nline 2")
        assert piped.returncode == 0, piped.stderr
        assert await receive(ws) == b"line 1\nline 2"
        assert await sse.wait_for(b"data:line 1\ndata:line 2\n\n")


async def test_publish_uses_the_configured_prefix(
    spawn: Callable[..., Wspush], redis_server: RedisServer, token: str
) -> None:
    server = spawn("-redis", redis_server.address, "-prefix", "app:")
    async with websocket(server.ws_url(token)) as ws:
        result = wspush("publish", "-redis", redis_server.address, "-prefix", "app:", token, "p")
        assert result.returncode == 0, result.stderr
        assert await receive(ws) == b"p"


def test_publish_to_an_unreachable_redis_fails_in_one_line() -> None:
    result = wspush("publish", "-redis", f"127.0.0.1:{free_port()}", "t", "m")
    assert result.returncode == 1
    assert result.stderr.decode().count("\n") == 1
    assert b"wspush publish: Redis at redis://127.0.0.1:" in result.stderr


def test_check_passes_end_to_end_and_sees_the_relays(
    relay: Wspush, redis_server: RedisServer
) -> None:
    result = wspush("check", "-redis", redis_server.address)
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert "ok    redis answers PING" in out
    assert "came back" in out
    assert "wspush relays subscribed to this Redis now: " in out
    assert "FAIL" not in out


def test_check_fails_on_an_unreachable_redis() -> None:
    result = wspush("check", "-redis", f"127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "FAIL  Redis at redis://127.0.0.1:" in result.stdout.decode()


def test_check_fails_on_a_wrong_password_without_showing_it(tmp_path: object) -> None:
    from pathlib import Path

    server = RedisServer(Path(str(tmp_path)), None, "--requirepass", "right").start()
    try:
        result = wspush("check", "-redis", f"redis://:hunter2@{server.address}")
    finally:
        server.kill()
    out = result.stdout.decode()
    assert result.returncode == 1
    assert "FAIL" in out
    assert "hunter2" not in out + result.stderr.decode()


def test_check_rejects_bad_settings_like_the_server() -> None:
    result = wspush("check", "--queue-size", "0")
    assert result.returncode == 2
    assert b"invalid --queue-size" in result.stderr


def test_every_command_has_help() -> None:
    for command in ("keygen", "token", "publish", "check"):
        result = wspush(command, "--help")
        assert result.returncode == 0
        assert f"usage: wspush {command}".encode() in result.stdout
    assert b"commands (wspush COMMAND --help)" in wspush("--help").stdout


def test_keygen_never_starts_a_key_with_a_dash() -> None:
    """A key is passed as `-hmac KEY`: one starting with '-' would read as an option."""
    from wspush.commands import keygen

    keys = [keygen() for _ in range(2000)]  # a leading '-' is 1 in 64 without the rule
    assert not any(key.startswith("-") for key in keys)
    assert len(set(keys)) == len(keys)
