"""deploy/wspush.service: systemd accepts it, and its command line serves and stops in time.

systemd does not run as PID 1 here, so the unit is not started by systemd; its
ExecStart line is run as-is instead (with the test's address and interpreter).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from tests.clients import receive, websocket
from tests.conftest import RedisServer, free_port
from tests.processes import assert_relays, serving
from wspush.cli import UVICORN_GRACE, build_parser
from wspush.settings import Settings, fields

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).parent.parent
UNIT = ROOT / "deploy" / "wspush.service"
INSTALLED_WSPUSH = Path(sys.executable).parent / "wspush"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections of a unit file; a key may repeat (systemd appends or resets)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def service() -> dict[str, list[str]]:
    return parse_unit(UNIT.read_text())["Service"]


def exec_start() -> list[str]:
    (command,) = service()["ExecStart"]
    return shlex.split(command)


def seconds(value: str) -> float:
    """systemd time spans as used here: `20`, `20s`, `1min`."""
    if value.endswith("min"):
        return float(value[:-3]) * 60
    return float(value.removesuffix("s"))


def test_systemd_analyze_verify_finds_nothing(tmp_path: Path) -> None:
    # verify checks that ExecStart's program exists: point it at this venv's wspush.
    text = UNIT.read_text().replace(exec_start()[0], str(INSTALLED_WSPUSH))
    unit = tmp_path / "wspush.service"
    unit.write_text(text)
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze (Debian package systemd) is missing"
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=30
    )
    complaints = [line for line in result.stderr.splitlines() if "wspush.service" in line]
    assert result.returncode == 0, result.stderr
    assert not complaints, complaints


def test_the_unit_runs_wspush_as_documented() -> None:
    unit = service()
    program, *arguments = exec_start()
    assert program.endswith("/wspush")
    # The ExecStart options are ones wspush accepts, with values it accepts.
    options = vars(build_parser().parse_args(arguments))
    names = {setting.name for setting in fields()}
    overrides = {name: str(value) for name, value in options.items() if name in names}
    settings = Settings.from_env(environ={}, overrides=overrides)
    assert settings.embedded_redis is False
    # systemd waits longer than wspush's drain before it sends SIGKILL.
    assert unit["KillSignal"] == ["SIGTERM"]
    (stop_timeout,) = unit["TimeoutStopSec"]
    assert seconds(stop_timeout) > settings.shutdown_timeout + UVICORN_GRACE
    assert unit["Restart"] == ["on-failure"]
    assert int(unit["LimitNOFILE"][0].split(":")[-1]) >= 65536
    assert unit.get("DynamicUser") == ["yes"] or unit.get("User")
    assert unit["EnvironmentFile"]


async def test_the_exec_start_command_serves_then_stops_cleanly_within_timeout_stop_sec(
    redis_server: RedisServer, tmp_path: Path, token: str
) -> None:
    arguments = exec_start()[1:]
    port = free_port()
    arguments[arguments.index("--addr") + 1] = f"127.0.0.1:{port}"
    # The environment file as the unit reads it: settings and REDIS_URL.
    environment = {k: v for k, v in os.environ.items() if not k.startswith("WSPUSH_")}
    environment.update(REDIS_URL=redis_server.url, WSPUSH_PREFIX="unit.")
    stop_timeout = seconds(service()["TimeoutStopSec"][0])
    with serving([str(INSTALLED_WSPUSH), *arguments], port, environment, tmp_path) as process:
        await assert_relays(port, redis_server, f"unit.{token}", token)
        async with websocket(f"ws://127.0.0.1:{port}/?token={token}") as ws:
            stopping = time.monotonic()
            process.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as closed:
                await receive(ws)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1001
        assert process.wait(timeout=stop_timeout) == 0
        assert time.monotonic() - stopping < stop_timeout
