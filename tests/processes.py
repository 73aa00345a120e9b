"""Running a wspush command line as a deployment would (Procfile, systemd unit, an
installed wheel) and checking that it relays: shared by the deployment tests."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from tests.clients import receive, websocket
from tests.conftest import RedisServer, wait_until
from tests.test_factory import ready


def stop(process: subprocess.Popen[bytes], signum: int = signal.SIGTERM) -> None:
    """Signal a child and reap it; SIGKILL if it is still there after 5 s."""
    if process.poll() is None:
        process.send_signal(signum)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


@contextlib.contextmanager
def serving(
    command: Sequence[str], port: int, env: Mapping[str, str], cwd: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """`command` running and ready on 127.0.0.1:`port` for the block; killed after it."""
    process = subprocess.Popen(
        list(command), env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_until(lambda: ready(f"127.0.0.1:{port}"), 15, f"{command[0]} on port {port}")
        yield process
    finally:
        stop(process, signal.SIGKILL)


async def assert_relays(port: int, redis_server: RedisServer, channel: str, token: str) -> None:
    """A WebSocket client on `token` gets what is published to `channel`."""
    async with websocket(f"ws://127.0.0.1:{port}/?token={token}") as ws:
        redis_server.publish(channel, f"published to {channel}")
        assert await receive(ws) == f"published to {channel}".encode()


def assert_stops_cleanly(process: subprocess.Popen[bytes], within: float = 10) -> None:
    """SIGTERM makes the process drain and exit 0 in time."""
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=within) == 0
