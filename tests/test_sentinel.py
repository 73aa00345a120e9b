"""Redis Sentinel: `redis+sentinel://` URLs, delivery through a real Sentinel setup, and a
failover (primary SIGKILLed, replica promoted by three real sentinels) that wspush follows."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from redis.asyncio.connection import SSLConnection
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.sentinel import Sentinel
from websockets.asyncio.client import ClientConnection

import wspush
from tests.clients import SSEClient, receive, websocket
from tests.conftest import (
    STARTUP_TIMEOUT,
    RedisServer,
    Wspush,
    free_port,
    redis_server_binary,
    wait_until,
)
from tests.test_cli import run_wspush
from wspush import history as wspush_history
from wspush.sentinel import (
    SentinelPrimary,
    SentinelTarget,
    SentinelURLError,
    parse_sentinel_url,
    redis_from_url,
)
from wspush.settings import Settings, SettingsError, redact_url

pytestmark = pytest.mark.anyio
MASTER = "mymaster"
FAILOVER_TIMEOUT = 20.0


class SentinelNode:
    """`redis-server sentinel.conf --sentinel` with a config file of its own (it rewrites it)."""

    def __init__(
        self,
        workdir: Path,
        primary_port: int,
        *,
        password: str | None = None,
        data_password: str | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.password = password
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f"dir {workdir}",
            f"sentinel monitor {MASTER} 127.0.0.1 {primary_port} 2",
            f"sentinel down-after-milliseconds {MASTER} 1000",
            f"sentinel failover-timeout {MASTER} 3000",
            f"sentinel parallel-syncs {MASTER} 1",
        ]
        if password:
            lines.append(f"requirepass {password}")  # also what it uses with its peers
        if data_password:
            lines.append(f"sentinel auth-pass {MASTER} {data_password}")
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "sentinel.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> SentinelNode:
        self.process = subprocess.Popen(
            [redis_server_binary(), str(self.config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self.answers, STARTUP_TIMEOUT, f"sentinel on {self.port}")
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password, socket_timeout=2)

    def answers(self) -> bool:
        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def master(self) -> dict[str, object]:
        with self.client() as client:
            return dict(client.sentinel_master(MASTER))

    def primary_port(self) -> int | None:
        try:
            with self.client() as client:
                address = client.sentinel_get_master_addr_by_name(MASTER)
        except redis.RedisError:
            return None
        return int(address[1]) if address else None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


class GuardedRedisServer(RedisServer):
    """A redis-server with a password, asked with it (an AUTH error is retried for seconds)."""

    def __init__(self, workdir: Path, password: str, *extra: str) -> None:
        super().__init__(workdir, None, "--requirepass", password, "--masterauth", password, *extra)
        self.password = password

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password, socket_timeout=5)

    def answers(self) -> bool:
        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.RedisError:
            return False


class Topology:
    """A primary, one replica of it, and three sentinels with quorum 2, all on loopback."""

    def __init__(
        self, workdir: Path, *, password: str | None = None, sentinel_password: str | None = None
    ) -> None:
        def server(name: str, *extra: str) -> RedisServer:
            if password:
                return GuardedRedisServer(workdir / name, password, *extra)
            return RedisServer(workdir / name, None, *extra)

        self.primary = server("primary")
        self.replica = server("replica", "--replicaof", "127.0.0.1", str(self.primary.port))
        self.sentinels = [
            SentinelNode(
                workdir / f"sentinel{n}",
                self.primary.port,
                password=sentinel_password,
                data_password=password,
            )
            for n in range(3)
        ]

    def start(self) -> Topology:
        self.primary.start()
        self.replica.start()
        for sentinel in self.sentinels:
            sentinel.start()
        return self

    def stop(self) -> None:
        for process in (*self.sentinels, self.primary, self.replica):
            with contextlib.suppress(Exception):
                process.kill()

    def addresses(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", s.port) for s in self.sentinels]

    def url(self, *, password: str | None = None, sentinel_password: str | None = None) -> str:
        members = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        userinfo = f":{password}@" if password else ""
        query = f"?sentinel_password={sentinel_password}" if sentinel_password else ""
        return f"redis+sentinel://{userinfo}{members}/{MASTER}{query}"

    def wait_failover_ready(self) -> None:
        """Until every sentinel knows the replica and both other sentinels (else no quorum)."""

        def ready() -> bool:
            try:
                states = [s.master() for s in self.sentinels]
            except redis.RedisError:
                return False
            return all(
                state["num-other-sentinels"] == 2 and state["num-slaves"] == 1 for state in states
            )

        wait_until(ready, FAILOVER_TIMEOUT, "the sentinels to know the replica and each other")


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    """Passwords on both layers, different ones: never failed over, shared by the module."""
    topology = Topology(
        tmp_path_factory.mktemp("sentinel-auth"), password="data-secret", sentinel_password="s-pw"
    ).start()
    yield topology
    topology.stop()


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    """No passwords; the test may kill any part of it."""
    topology = Topology(tmp_path / "sentinel").start()
    yield topology
    topology.stop()


# --- the URL ---


@pytest.mark.parametrize(
    ("url", "target"),
    [
        (
            "redis+sentinel://h1:26379,h2:26380/mymaster",
            SentinelTarget((("h1", 26379), ("h2", 26380)), "mymaster"),
        ),
        (
            "redis+sentinel://:p%40ss@h1,[::1],[::2]:7/m/3?sentinel_password=sp",
            SentinelTarget(
                (("h1", 26379), ("::1", 26379), ("::2", 7)),
                "m",
                db=3,
                password="p@ss",
                sentinel_password="sp",
            ),
        ),
        (
            "REDISS+SENTINEL://app:pw@h/m/?sentinel_username=mon&sentinel_password=x",
            SentinelTarget(
                (("h", 26379),),
                "m",
                username="app",
                password="pw",
                sentinel_username="mon",
                sentinel_password="x",
                tls=True,
            ),
        ),
    ],
)
def test_sentinel_urls_name_the_sentinels_the_master_and_both_credentials(
    url: str, target: SentinelTarget
) -> None:
    assert parse_sentinel_url(url) == target
    assert Settings(redis=url).redis_url == url


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://h1:26379,h2:26379", "the master name is missing"),
        ("redis+sentinel://h1:26379,,h2/m", "a sentinel address is empty"),
        ("redis+sentinel://h1:notaport/m", "bad port"),
        ("redis+sentinel://h1:70000/m", "bad port"),
        ("redis+sentinel://[::1/m", "bad sentinel address"),
        ("redis+sentinel://::1:26379/m", "bad sentinel address"),
        ("redis+sentinel://h/m/db1", "is not a number"),
        ("redis+sentinel://h/m/1/2", "too many path segments"),
        ("redis+sentinel://h/m?master=x", "unknown option 'master'"),
    ],
)
def test_bad_sentinel_urls_say_what_is_wrong(url: str, problem: str) -> None:
    with pytest.raises(SentinelURLError, match=problem):
        parse_sentinel_url(url)
    with pytest.raises(SettingsError, match=f"^invalid --redis: .*{problem}") as raised:
        Settings(redis=url)
    assert "\n" not in str(raised.value)


def test_a_bad_sentinel_url_stops_start_up_with_one_line_and_no_password() -> None:
    result = run_wspush("-redis", "redis+sentinel://:hunter2@h1:26379?sentinel_password=x2")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("wspush: invalid --redis: ")
    assert "the master name is missing" in line
    assert "hunter2" not in line
    assert "x2" not in line


def test_the_passwords_of_a_sentinel_url_are_redacted() -> None:
    url = "redis+sentinel://app:data-pw@h1,h2/m?sentinel_username=u&sentinel_password=s-pw"
    assert redact_url(url) == (
        "redis+sentinel://app:***@h1,h2/m?sentinel_username=u&sentinel_password=***"
    )


async def test_a_tls_sentinel_url_uses_tls_and_the_verify_setting_for_both_layers() -> None:
    url = "rediss+sentinel://:pw@h1,h2/m?sentinel_password=sp"
    client = redis_from_url(url, ssl_cert_reqs="none", socket_connect_timeout=2)
    assert isinstance(client, SentinelPrimary)
    primary = client.connection_pool
    assert issubclass(primary.connection_class, SSLConnection)
    assert primary.connection_kwargs["password"] == "pw"
    assert primary.connection_kwargs["ssl_cert_reqs"] == "none"
    for sentinel in client.sentinel_clients:
        options = sentinel.connection_pool.connection_kwargs
        assert issubclass(sentinel.connection_pool.connection_class, SSLConnection)
        assert (options["password"], options["ssl_cert_reqs"]) == ("sp", "none")
        assert options["socket_timeout"] == 2
    await client.aclose()


# --- against real sentinels ---


async def test_delivery_through_sentinels_with_passwords_on_both_layers(
    spawn: Callable[..., Wspush], guarded: Topology, token: str
) -> None:
    server = spawn("-redis", guarded.url(password="data-secret", sentinel_password="s-pw"))
    # The backend publishes as the README shows: through a client of the current primary.
    sentinel = AsyncSentinel(
        guarded.addresses(), sentinel_kwargs={"password": "s-pw"}, socket_timeout=5
    )
    publisher = sentinel.master_for(MASTER, password="data-secret")
    async with (
        websocket(server.ws_url(token)) as ws,
        SSEClient(f"{server.url}/sse?token={token}") as sse,
        publisher,
    ):
        assert await wspush.apublish(publisher, token, "via sentinel") == 1
        assert await receive(ws) == b"via sentinel"
        await sse.wait_for(b"data:via sentinel\n\n")
    await sentinel.aclose()
    log = server.log()
    assert "subscribed to 'example.*' at redis+sentinel://:***@127.0.0.1:" in log
    assert "data-secret" not in log
    assert "s-pw" not in log


@pytest.mark.parametrize(
    ("password", "sentinel_password", "error"),
    [
        ("data-secret", "wrong-s-pw", "No master found for 'mymaster' : sentinel 127.0.0.1:"),
        ("wrong-data-pw", "s-pw", "redis: AuthenticationError at "),
    ],
)
def test_a_wrong_password_keeps_wspush_unready_and_is_logged_redacted(
    spawn: Callable[..., Wspush],
    guarded: Topology,
    password: str,
    sentinel_password: str,
    error: str,
) -> None:
    server = spawn(
        "-redis", guarded.url(password=password, sentinel_password=sentinel_password), ready=False
    )
    wait_until(lambda: "retrying every" in server.log(), 10, f"a Redis error\n{server.log()}")
    assert server.status("/ready") == 503
    log = server.log()
    assert error in log
    assert password not in log
    assert sentinel_password not in log


async def publish_until_received(
    publisher: redis.Redis, token: str, ws: ClientConnection, timeout: float
) -> float:
    """Publish every 100 ms until the client gets it; returns the seconds it took."""
    started = time.monotonic()
    async with asyncio.timeout(timeout):
        while True:
            with contextlib.suppress(redis.ConnectionError):  # the primary may be moving
                wspush.publish(publisher, token, "after failover")
            try:
                if await receive(ws, 0.1) == b"after failover":
                    return time.monotonic() - started
            except TimeoutError:
                continue


async def test_wspush_follows_a_failover_to_the_promoted_replica(
    spawn: Callable[..., Wspush], topology: Topology, token: str
) -> None:
    topology.wait_failover_ready()
    server = spawn("-redis", topology.url())
    channel = f"example.{token}"
    publisher = Sentinel(topology.addresses(), socket_timeout=2).master_for(MASTER)
    async with (
        websocket(server.ws_url(token)) as ws,
        SSEClient(f"{server.url}/sse?token={token}") as sse,
    ):
        assert wspush.publish(publisher, token, "before") == 1
        assert await receive(ws) == b"before"
        await sse.wait_for(b"data:before\n\n")

        topology.primary.kill()  # SIGKILL: no goodbye to anyone
        wait_until(
            lambda: server.status("/ready") == 503, 5, "/ready to report the lost subscription"
        )
        wait_until(
            lambda: all(s.primary_port() == topology.replica.port for s in topology.sentinels),
            FAILOVER_TIMEOUT,
            "the sentinels to promote the replica",
        )
        with redis.Redis(port=topology.replica.port, socket_timeout=5) as promoted:
            assert promoted.info("replication")["role"] == "master"

        # The client connected before the failover gets messages published to the new
        # primary, by the same publisher client, which asked the sentinels again.
        await publish_until_received(publisher, token, ws, 10)
        server.wait_ready(5)
        await sse.wait_for(b"data:after failover\n\n")

    # And a client that connects (or reconnects) now.
    async with websocket(server.ws_url(token)) as again:
        topology.replica.publish(channel, "reconnected")
        assert await receive(again) == b"reconnected"
    publisher.close()
    log = server.log()
    assert log.count("subscribed to 'example.*' at redis+sentinel://127.0.0.1:") == 2, log
    assert log.count(" ERROR ") == 1, log  # once per outage, not once per retry


async def test_resume_across_a_sentinel_failover(
    spawn: Callable[..., Wspush], topology: Topology, token: str
) -> None:
    """History is replicated: a client that resumes after the primary was killed and
    its replica promoted gets what was recorded before and after the failover (as long as
    the replica had it: history is as durable as Redis's replication)."""
    from tests.test_resume import messages, sse_until

    topology.wait_failover_ready()
    server = spawn("-redis", topology.url(), "--history-size", "100")
    publisher = Sentinel(topology.addresses(), socket_timeout=2).master_for(MASTER)
    ids = [wspush.publish(publisher, token, f"m{n}", history=100) for n in range(3)]
    key = wspush_history.history_key(f"example.{token}".encode())
    with redis.Redis(port=topology.replica.port, socket_timeout=5) as replica:
        wait_until(lambda: replica.xlen(key) == 3, 5, "the replica to have the history")
    topology.primary.kill()
    wait_until(
        lambda: all(s.primary_port() == topology.replica.port for s in topology.sentinels),
        FAILOVER_TIMEOUT,
        "the sentinels to promote the replica",
    )
    server.wait_ready(15)

    def after() -> str:
        return str(wspush.publish(publisher, token, "after failover", history=100))

    deadline = time.monotonic() + 10
    while True:  # the publisher asks the sentinels again once the old primary fails
        try:
            after()
            break
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
    url = f"{server.url}/sse?token={token}"
    async with SSEClient(url, {"Last-Event-ID": str(ids[0])}) as client:
        try:
            events = await sse_until(client, 3, timeout=10)
        except TimeoutError:
            raise AssertionError((bytes(client.body), server.log()[-2000:])) from None
    assert messages(events) == ["m1", "m2", "after failover"]
    publisher.close()
