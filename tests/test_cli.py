"""The `wspush` command: Go's flags, long options, clear errors, signals, embedded Redis."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.clients import SSEClient, receive, websocket
from tests.conftest import RedisServer, Wspush, free_port
from wspush.settings import env_name, fields, option_name

pytestmark = pytest.mark.anyio


def run_wspush(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wspush", *args], capture_output=True, text=True, timeout=timeout
    )


def test_help_documents_every_setting_with_its_environment_variable() -> None:
    result = run_wspush("-h")
    assert result.returncode == 0
    for setting in fields():
        assert option_name(setting.name) in result.stdout
        assert env_name(setting.name) in result.stdout
    for go_flag in ("-addr", "-redis", "-prefix", "-hmac", "-ping", "-expvar"):
        assert f"{go_flag} " in result.stdout
    assert "WSPUSH_KEY" in result.stdout
    assert "REDIS_URL" in result.stdout


def test_the_console_script_is_installed() -> None:
    script = shutil.which("wspush", path=str(Path(sys.executable).parent))
    assert script is not None
    result = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=20)
    assert result.returncode == 0
    assert result.stdout.startswith("wspush ")


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["-hmac", "not*base64"], "invalid --hmac"),
        (["-addr", "nowhere"], "invalid --addr"),
        (["--ping-interval", "soon"], "invalid --ping-interval"),
        (["--ws-frame", "json"], "--ws-frame"),
        (["-redis", "http://x:1"], "invalid --redis"),
        (["-nosuchflag", "1"], "unrecognized arguments"),
    ],
)
def test_bad_values_stop_start_up_with_one_line_naming_the_setting(
    args: list[str], named: str
) -> None:
    result = run_wspush(*args)
    assert result.returncode == 2
    assert named in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("wspush: ")


@pytest.mark.parametrize("form", ["separate", "equals", "long"])
async def test_go_flag_forms_and_long_options_are_equivalent(
    form: str, redis_server: RedisServer, tmp_path: Path, token: str
) -> None:
    port = free_port()
    values = {"addr": f"127.0.0.1:{port}", "redis": redis_server.address, "prefix": "flags."}
    args: list[str] = []
    for name, value in values.items():
        flag = f"--{name}" if form == "long" else f"-{name}"
        args += [f"{flag}={value}"] if form == "equals" else [flag, value]
    server = Wspush(tmp_path, env={})
    server.args = args
    server.port = port
    server.start()
    try:
        async with websocket(server.ws_url(token)) as ws:
            redis_server.publish(f"flags.{token}", "flagged")
            assert await receive(ws) == b"flagged"
    finally:
        server.stop()


@pytest.mark.both_servers
async def test_sigterm_closes_clients_cleanly_and_exits_within_5_seconds(
    spawn: Callable[..., Wspush], fresh_redis: RedisServer, token: str, server: str
) -> None:
    # A bare uvicorn closes WebSockets itself (1012, service restart) before the relay
    # has seen the signal, and dies of the signal it re-raises once done (README:
    # "Running under uvicorn"); wspush drains first (1001) and exits 0.
    codes = {1001} if server == "wspush" else {1001, 1012}
    exit_codes = {0} if server == "wspush" else {0, -signal.SIGTERM}
    relay = spawn("-redis", fresh_redis.address)
    with fresh_redis.client() as client:
        assert any(c["name"] == "wspush" for c in client.client_list())
    async with (
        websocket(relay.ws_url(token)) as ws1,
        websocket(relay.ws_url(token)) as ws2,
        SSEClient(f"{relay.url}/sse?token={token}") as sse1,
        SSEClient(f"{relay.url}/sse?token={token}") as sse2,
    ):
        assert relay.process is not None
        started = time.monotonic()
        relay.process.send_signal(signal.SIGTERM)
        for ws in (ws1, ws2):
            with pytest.raises(ConnectionClosed) as closed:
                await receive(ws)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code in codes
        for sse in (sse1, sse2):
            body = await sse.wait_end()
            assert body.startswith(b"retry:")
            assert body.endswith(b"\n\n")
        exit_code = await asyncio.to_thread(relay.process.wait, 10)
        assert time.monotonic() - started < 5
    assert exit_code in exit_codes
    with fresh_redis.client() as client:
        assert not any(c["name"] == "wspush" for c in client.client_list())


@pytest.mark.both_servers
def test_sigint_stops_it_too(spawn: Callable[..., Wspush], redis_server: RedisServer) -> None:
    server = spawn("-redis", redis_server.address)
    started = time.monotonic()
    assert server.stop(signal.SIGINT) == 0
    assert time.monotonic() - started < 5


def test_new_connections_are_refused_while_draining_is_logged(
    spawn: Callable[..., Wspush], redis_server: RedisServer
) -> None:
    server = spawn("-redis", redis_server.address)
    assert server.stop() == 0
    assert "wspush stopped" in server.log()


def embedded_run(*args: str) -> dict[str, object]:
    """Run tests/embedded_driver.py in a new network namespace, where 6379 is free."""
    driver = Path(__file__).with_name("embedded_driver.py")
    result = subprocess.run(
        [
            "unshare",
            "--net",
            "sh",
            "-c",
            'ip link set lo up && exec "$@"',
            "sh",
            sys.executable,
            str(driver),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parent.parent,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_with_no_redis_configured_it_starts_an_embedded_one_and_stops_it() -> None:
    found = embedded_run()
    assert found["ready"], found["log"]
    assert found["embedded_answers"]
    assert found["delivered"] == "data:from embedded\n\n"
    assert found["exit_code"] == 0
    assert not found["answers_after_exit"]
    assert "EMBEDDED redis-server on 127.0.0.1:6379" in str(found["log"])


def test_with_a_redis_configured_it_never_embeds_one() -> None:
    found = embedded_run("-redis", "127.0.0.1:6390")
    assert not found["ready"]
    assert not found["embedded_answers"]
    assert "EMBEDDED" not in str(found["log"])
    assert found["exit_code"] == 0


def test_expvar_listens_on_its_own_address(
    spawn: Callable[..., Wspush], redis_server: RedisServer
) -> None:
    port = free_port()
    server = spawn("-redis", redis_server.address, "-expvar", f"127.0.0.1:{port}")
    stats = httpx.get(f"http://127.0.0.1:{port}/debug/vars", timeout=5).json()
    assert {"sessions_seen", "messages_seen", "successful_deliveries"} <= set(stats["wspush"])
    assert httpx.get(f"{server.url}/debug/vars", timeout=5).status_code == 400  # no token
