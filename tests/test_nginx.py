"""deploy/nginx.conf, as committed, in front of real wspush processes: Debian's nginx on
free ports, real clients through it, the suite's real redis-server behind."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.clients import TIMEOUT, SSEClient, receive, websocket
from tests.conftest import RedisServer, Wspush, free_port, wait_until
from tests.processes import stop

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).parent.parent
SITE = ROOT / "deploy" / "nginx.conf"
NGINX = "/usr/sbin/nginx"  # Debian's package `nginx`; .ci/run installs it


def replace_once(text: str, old: str, new: str) -> str:
    """Substitute a line the test relies on; fails when deploy/nginx.conf no longer has it."""
    assert text.count(old) == 1, f"deploy/nginx.conf should contain {old!r} once"
    return text.replace(old, new)


def render_site(listen: int, upstreams: list[int], read_timeout: str | None = None) -> str:
    """deploy/nginx.conf with only its addresses (and, if asked, its timeout) changed."""
    text = SITE.read_text()
    text = replace_once(text, "    listen 80;\n", f"    listen 127.0.0.1:{listen};\n")
    servers = "".join(f"    server 127.0.0.1:{port} max_fails=0;\n" for port in upstreams)
    text = replace_once(text, "    server 127.0.0.1:8080 max_fails=0;\n", servers)
    if read_timeout is not None:
        text = replace_once(text, "proxy_read_timeout 75s;", f"proxy_read_timeout {read_timeout};")
    return text


class Nginx:
    """A foreground nginx with everything it writes under one directory."""

    def __init__(self, workdir: Path, port: int, site: str) -> None:
        self.port = port
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "site.conf").write_text(site)
        temp = {
            name: workdir / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        }
        (workdir / "nginx.conf").write_text(
            f"""
daemon off;
master_process off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log off;
    # A main config that would compress event streams and ignores X-Accel-Buffering:
    # only the site file's own settings keep SSE uncompressed and unbuffered.
    gzip on;
    gzip_types text/event-stream;
    proxy_ignore_headers X-Accel-Buffering;
    client_body_temp_path {temp["client_body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    include {workdir}/site.conf;
}}
"""
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, token: str) -> str:
        return f"ws://127.0.0.1:{self.port}/?token={token}"

    def start(self) -> Nginx:
        command = [NGINX, "-p", str(self.workdir), "-e", str(self.workdir / "error.log")]
        self.process = subprocess.Popen(
            [*command, "-c", str(self.workdir / "nginx.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        wait_until(self.answers, 10, f"nginx on {self.port}\n{self.log()}")
        return self

    def answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"nginx exited with {self.process.returncode}:\n{self.log()}")
        try:
            return httpx.get(self.url + "/ping", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)

    def log(self) -> str:
        path = self.workdir / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


ProxyFactory = Callable[..., Nginx]


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[ProxyFactory]:
    """Start nginx with deploy/nginx.conf in front of the given wspush processes."""
    started: list[Nginx] = []

    def start(*upstreams: Wspush, read_timeout: str | None = None) -> Nginx:
        port = free_port()
        site = render_site(port, [u.port for u in upstreams], read_timeout)
        server = Nginx(tmp_path / f"nginx{len(started)}", port, site)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@contextlib.asynccontextmanager
async def sse_from(address: str, url: str, **headers: str) -> AsyncIterator[httpx.Response]:
    """An SSE request from a given loopback source address (127.0.0.x)."""
    transport = httpx.AsyncHTTPTransport(local_address=address)
    async with (
        httpx.AsyncClient(transport=transport, timeout=TIMEOUT) as client,
        client.stream("GET", url, headers=headers) as response,
    ):
        yield response


async def test_websocket_and_sse_through_nginx_receive_messages_unbuffered(
    redis_server: RedisServer, spawn: Callable[..., Wspush], proxy: ProxyFactory, token: str
) -> None:
    nginx = proxy(spawn("-redis", redis_server.address))
    async with (
        websocket(nginx.ws_url(token)) as ws,
        SSEClient(f"{nginx.url}/sse?token={token}", {"Accept-Encoding": "gzip"}) as sse,
    ):
        assert sse.status == 200
        assert sse.response is not None
        assert sse.response.headers["content-type"].startswith("text/event-stream")
        assert "content-encoding" not in sse.response.headers
        for n in range(3):
            published = time.monotonic()
            redis_server.publish(f"example.{token}", f"through nginx {n}")
            await sse.wait_for(f"data:through nginx {n}\n\n".encode(), timeout=1)
            sse_latency = time.monotonic() - published
            assert await receive(ws, timeout=1) == f"through nginx {n}".encode()
            # An event held in a proxy buffer would wait for more data or the stream's end.
            assert sse_latency < 0.3, f"SSE event took {sse_latency:.3f}s through nginx"


async def test_heartbeats_keep_idle_connections_open_past_nginx_read_timeout(
    redis_server: RedisServer, spawn: Callable[..., Wspush], proxy: ProxyFactory, token: str
) -> None:
    """With nginx's timeout at 3 s, 1 s heartbeats keep connections up for 5 s of silence;
    without heartbeats in that time, the same nginx closes them (so the timeout is real)."""
    beating = proxy(
        spawn("-redis", redis_server.address, "--ping-interval", "1"), read_timeout="3s"
    )
    silent = proxy(
        spawn("-redis", redis_server.address, "--ping-interval", "60"), read_timeout="3s"
    )
    no_pings = {"ping_interval": None}  # the client must not keep the connection alive itself
    async with (
        websocket(beating.ws_url(token), **no_pings) as beating_ws,
        SSEClient(f"{beating.url}/sse?token={token}") as beating_sse,
        websocket(silent.ws_url(token), **no_pings) as silent_ws,
        SSEClient(f"{silent.url}/sse?token={token}") as silent_sse,
    ):
        await asyncio.sleep(5)
        assert not beating_sse.ended.is_set()
        redis_server.publish(f"example.{token}", "after 5 s idle")
        await beating_sse.wait_for(b"data:after 5 s idle\n\n")
        assert await receive(beating_ws) == b"after 5 s idle"
        # The silent pair was cut by nginx after 3 s.
        assert b"after 5 s idle" not in await silent_sse.wait_end(timeout=1)
        with pytest.raises(ConnectionClosed):
            await receive(silent_ws, timeout=1)


async def test_wspush_counts_the_client_address_from_nginx_x_forwarded_for(
    redis_server: RedisServer, spawn: Callable[..., Wspush], proxy: ProxyFactory, token: str
) -> None:
    """Clients from 127.0.0.2 and 127.0.0.3 reach wspush through nginx at 127.0.0.1. With
    --max-per-ip 1 each gets one connection: wspush counts them apart, not as nginx."""
    relay = spawn("-redis", redis_server.address, "--max-per-ip", "1")
    nginx = proxy(relay)
    url = f"{nginx.url}/sse?token={token}"
    async with sse_from("127.0.0.2", url) as first, sse_from("127.0.0.3", url) as other:
        assert first.status_code == 200
        assert other.status_code == 200
        # A forged X-Forwarded-For does not help: nginx appends the real address last.
        async with sse_from("127.0.0.2", url, **{"X-Forwarded-For": "203.0.113.9"}) as again:
            assert again.status_code == 429
        with pytest.raises(InvalidStatus) as refused:
            async with websocket(nginx.ws_url(token), local_addr=("127.0.0.3", 0)):
                pass
        assert refused.value.response.status_code == 429


async def test_several_instances_behind_one_upstream_each_deliver_every_message(
    redis_server: RedisServer, spawn: Callable[..., Wspush], proxy: ProxyFactory, token: str
) -> None:
    expvars = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    # A prefix of their own: other relays of the test run listen on the default one.
    relays = [
        spawn("-redis", redis_server.address, "-expvar", address, "-prefix", "pair.")
        for address in expvars
    ]
    nginx = proxy(*relays)
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(websocket(nginx.ws_url(token))) for _ in range(4)
        ]
        streams = [
            await stack.enter_async_context(SSEClient(f"{nginx.url}/sse?token={token}"))
            for _ in range(2)
        ]
        # nginx spread the connections over both instances; no stickiness is involved.
        open_per_instance = [
            httpx.get(f"http://{address}/debug/vars", timeout=TIMEOUT).json()["wspush"][
                "connections_open"
            ]
            for address in expvars
        ]
        assert sum(open_per_instance) == 6
        assert all(count > 0 for count in open_per_instance), open_per_instance
        # Both instances are subscribed, and each relays to its own clients.
        assert redis_server.publish(f"pair.{token}", "to every instance") == 2
        for ws in clients:
            assert await receive(ws) == b"to every instance"
        for sse in streams:
            await sse.wait_for(b"data:to every instance\n\n")
