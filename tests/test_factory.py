"""Library use: `create_app(settings)` apps are independent, mountable, and run under a
bare `uvicorn` command configured from the environment and a `.env` file."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from websockets.exceptions import ConnectionClosed

from tests.clients import SSEClient, receive, websocket
from tests.conftest import RedisServer, free_port, wait_until
from wspush import Settings, create_app

pytestmark = pytest.mark.anyio


@contextlib.contextmanager
def served(app: Starlette) -> Iterator[str]:
    """Run an app under uvicorn in a thread on a free port; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 10, "uvicorn in a thread")
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        assert not thread.is_alive()


def ready(base: str, path: str = "/ready") -> bool:
    try:
        return httpx.get(f"http://{base}{path}", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


async def test_two_apps_in_one_process_keep_separate_hubs_and_prefixes(
    redis_server: RedisServer, token: str
) -> None:
    first = create_app(Settings(redis=redis_server.address, prefix="one."))
    second = create_app(Settings(redis=redis_server.address, prefix="two.", ws_frame="text"))
    assert first.state.relay is not second.state.relay
    with served(first) as one, served(second) as two:
        wait_until(lambda: ready(one) and ready(two), 10, "both apps subscribed")
        async with (
            websocket(f"ws://{one}/?token={token}") as ws_one,
            websocket(f"ws://{two}/?token={token}") as ws_two,
        ):
            redis_server.publish(f"two.{token}", "for two")
            redis_server.publish(f"one.{token}", "for one")
            assert await receive(ws_one) == b"for one"
            assert await receive(ws_two) == "for two"


async def test_mounted_in_a_parent_app_whose_lifespan_starts_wspush(
    redis_server: RedisServer, token: str
) -> None:
    push = create_app(Settings(redis=redis_server.address))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with push.state.relay.lifespan():
            yield

    async def home(request: object) -> PlainTextResponse:
        return PlainTextResponse("parent")

    parent = Starlette(routes=[Route("/", home), Mount("/push", app=push)], lifespan=lifespan)
    with served(parent) as base:
        wait_until(lambda: ready(base, "/push/ready"), 10, "mounted wspush subscribed")
        assert httpx.get(f"http://{base}/", timeout=5).text == "parent"
        async with (
            websocket(f"ws://{base}/push/?token={token}") as ws,
            SSEClient(f"http://{base}/push/sse?token={token}") as sse,
        ):
            redis_server.publish(f"example.{token}", "mounted")
            assert await receive(ws) == b"mounted"
            await sse.wait_for(b"data:mounted\n\n")


async def test_bare_uvicorn_reads_the_environment_and_a_dotenv_file(
    redis_server: RedisServer, tmp_path: Path, token: str
) -> None:
    (tmp_path / ".env").write_text(f"WSPUSH_PREFIX=dotenv.\nREDIS_URL={redis_server.url}\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSPUSH_") and k != "REDIS_URL"}
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "wspush.app:app", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"127.0.0.1:{port}"
    try:
        wait_until(lambda: ready(base), 15, "uvicorn wspush.app:app")
        async with websocket(f"ws://{base}/?token={token}") as ws:
            redis_server.publish(f"dotenv.{token}", "from .env")
            assert await receive(ws) == b"from .env"
            process.send_signal(signal.SIGTERM)
            # Under bare uvicorn, WebSockets get uvicorn's 1012 or wspush's 1001.
            with pytest.raises(ConnectionClosed) as closed:
                await receive(ws)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code in (1001, 1012)
        assert process.wait(timeout=10) is not None
    finally:
        process.kill()
        process.wait(timeout=5)
