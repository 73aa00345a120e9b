"""bench/loadtest.py works against a real wspush: a short run of each mode, so the tool a
user points at a deployment is known to measure correctly (its figures are checked
for sense, not for speed: speed is measured by running the benchmark, not by tests).
bench/open_cost.py, which drives the engine's protocols itself, still opens streams."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import RedisServer, Wspush

LOADTEST = Path(__file__).parent.parent / "bench" / "loadtest.py"
OPEN_COST = Path(__file__).parent.parent / "bench" / "open_cost.py"


def loadtest(relay: Wspush, redis_server: RedisServer, *args: str) -> dict[str, object]:
    assert relay.process is not None
    result = subprocess.run(
        [
            sys.executable, str(LOADTEST), "--url", relay.url, "--redis", redis_server.url,
            "--prefix", "example.", "--server-pid", str(relay.process.pid), "--json", *args,
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("transport", ["ws", "sse", "mix"])
def test_a_short_fixed_rate_run_delivers_everything(
    relay: Wspush, redis_server: RedisServer, transport: str
) -> None:
    report = loadtest(
        relay, redis_server, "--transport", transport, "--connections", "60", "--tokens", "20",
        "--rate", "300", "--duration", "1",
    )  # fmt: skip
    assert report["opened"] == 60
    assert report["failed"] == 0
    assert report["published"] == 300
    assert report["expected"] == report["received"] == 900
    assert report["loss"] == 0
    assert 0 < report["latency_ms_p50"] <= report["latency_ms_p99"]  # type: ignore[operator]


def test_idle_mode_reports_memory_per_connection_and_checks_every_connection(
    relay: Wspush, redis_server: RedisServer
) -> None:
    report = loadtest(relay, redis_server, "--transport", "mix", "--connections", "200",
                      "--tokens", "200", "--idle", "1")  # fmt: skip
    assert report["opened"] == 200
    assert report["check_ok_connections"] == 200
    assert isinstance(report["kb_per_conn"], float)
    assert report["kb_per_conn"] > 0


def test_it_refuses_to_load_a_remote_host(redis_server: RedisServer) -> None:
    result = subprocess.run(
        [sys.executable, str(LOADTEST), "--url", "http://192.0.2.1:8080", "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "loopback" in result.stderr.lower()


def test_jwt_mode_connects_with_jwts_and_publishes_to_their_sub(
    spawn: Callable[..., Wspush], redis_server: RedisServer
) -> None:
    secret = "bench-secret-of-at-least-thirty-two-bytes"
    relay = spawn("-redis", redis_server.address, "--jwt-secret", secret)
    report = loadtest(
        relay, redis_server, "--transport", "mix", "--connections", "20", "--tokens", "10",
        "--rate", "100", "--duration", "1", "--jwt-secret", secret,
    )  # fmt: skip
    assert report["opened"] == 20
    assert report["failed"] == 0
    assert report["expected"] == report["received"] == 200
    assert isinstance(report["setup_server_cpu_s"], float)


def test_open_cost_opens_every_stream_it_times_on_both_transports() -> None:
    """Its stand-in transport offers what the engine's protocols ask of a transport: each
    child process checks that every connection it drove is open in the hub."""
    result = subprocess.run(
        [sys.executable, str(OPEN_COST), "-n", "300", "--reps", "1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    medians = result.stdout.split("# medians", 1)[1].split()
    for mode in ("ws", "sse"):
        assert float(medians[medians.index(mode) + 1]) > 0
