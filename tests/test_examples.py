"""The publisher examples, end to end: each framework's own test client (or a real Celery
worker) drives the example, a real wspush relays, real WebSocket and SSE clients receive.

The examples read the relay's variables (REDIS_URL, WSPUSH_KEY, WSPUSH_PREFIX); the
relay here checks signed tokens and uses a prefix of its own, so an example that
signed wrongly or ignored the prefix would deliver nothing.
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import jwt
import pytest
from websockets.asyncio.client import ClientConnection

from tests.clients import SSEClient, receive, websocket
from tests.conftest import RedisServer, Wspush, wait_until
from tests.jwts import SECRET

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).parent.parent
PREFIX = "shop."
CELERY_WORKER = (sys.executable, "-m", "celery", "-A", "examples.celery_app", "worker")
EXAMPLES = ("flask_app", "fastapi_app", "django_app", "celery_app")


@dataclass
class Setup:
    relay: Wspush
    env: dict[str, str]

    def example(self, name: str) -> ModuleType:
        return importlib.import_module(f"examples.{name}")


@pytest.fixture(scope="module")
def setup(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """One relay with signed tokens, and the examples' environment pointing at it."""
    key = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
    env = {
        "REDIS_URL": redis_server.url,
        "WSPUSH_KEY": key,
        "WSPUSH_PREFIX": PREFIX,
        # Celery's broker: the same redis-server, another database.
        "CELERY_BROKER_URL": f"{redis_server.url}/1",
    }
    relay = Wspush(
        tmp_path_factory.mktemp("examples"),
        "-redis",
        redis_server.address,
        "-hmac",
        key,
        "-prefix",
        PREFIX,
    ).start()
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        yield Setup(relay, env)
        for name in EXAMPLES:
            sys.modules.pop(f"examples.{name}", None)
    with contextlib.suppress(Exception):
        relay.stop()


@contextlib.asynccontextmanager
async def listeners(relay: Wspush, token: str) -> AsyncIterator[tuple[ClientConnection, SSEClient]]:
    async with (
        websocket(relay.ws_url(token)) as ws,
        SSEClient(f"{relay.url}/sse?token={token}") as sse,
    ):
        assert sse.status == 200
        yield ws, sse


async def assert_both_receive(ws: ClientConnection, sse: SSEClient, message: Any) -> None:
    """Both clients get `message`, as the same published bytes."""
    published = await receive(ws)
    assert isinstance(published, bytes)
    assert json.loads(published) == message
    await sse.wait_for(b"data:" + published + b"\n\n")


async def test_flask_routes_hand_out_a_token_and_publish(setup: Setup) -> None:
    app = setup.example("flask_app").create_app()
    client = app.test_client()
    token = client.get("/push-token/42").get_json()["token"]
    # The relay accepts the signed token only: the bare payload is refused.
    assert httpx.get(f"{setup.relay.url}/sse?token=user:42", timeout=5).status_code == 400
    async with listeners(setup.relay, token) as (ws, sse):
        response = client.post("/users/42/notify", json={"type": "order-shipped", "id": 7})
        assert response.get_json() == {"relays": 1}
        await assert_both_receive(ws, sse, {"type": "order-shipped", "id": 7})


async def test_django_views_hand_out_a_token_and_publish(setup: Setup) -> None:
    setup.example("django_app")
    import django
    from django.test import Client

    django.setup()
    client = Client()
    token = client.get("/push-token/7").json()["token"]
    async with listeners(setup.relay, token) as (ws, sse):
        response = client.post(
            "/users/7/notify",
            data={"type": "comment", "text": "hi"},
            content_type="application/json",
        )
        assert response.json() == {"relays": 1}
        await assert_both_receive(ws, sse, {"type": "comment", "text": "hi"})
    assert client.get("/users/7/notify").status_code == 405


async def test_fastapi_endpoints_use_the_lifespan_client(setup: Setup) -> None:
    app = setup.example("fastapi_app").app
    transport = httpx.ASGITransport(app=app)
    # The app's lifespan makes the Redis client (ASGITransport does not run lifespans).
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://app") as client,
    ):
        token = (await client.get("/push-token/9")).json()["token"]
        async with listeners(setup.relay, token) as (ws, sse):
            response = await client.post("/users/9/notify", json={"type": "invoice", "total": 12.5})
            assert response.json() == {"relays": 1}
            await assert_both_receive(ws, sse, {"type": "invoice", "total": 12.5})


@pytest.fixture
def celery_worker(setup: Setup) -> Iterator[subprocess.Popen[str]]:
    """A real Celery worker (solo pool) on the suite's redis-server as broker."""
    env = {**os.environ, **setup.env}
    worker = subprocess.Popen(
        [*CELERY_WORKER, "--pool", "solo", "--loglevel", "INFO", "--without-mingle"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert worker.stdout is not None
        for line in worker.stdout:
            lines.append(line)
            if " ready." in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        wait_until(lambda: ready.is_set() or worker.poll() is not None, 30, "the Celery worker")
        assert ready.is_set(), "".join(lines)
        yield worker
    finally:
        worker.send_signal(signal.SIGTERM)  # warm shutdown
        try:
            worker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(timeout=5)


async def test_a_celery_task_on_a_real_worker_pushes_its_progress(
    setup: Setup, celery_worker: subprocess.Popen[str]
) -> None:
    example = setup.example("celery_app")
    token = example.user_token(5)
    async with listeners(setup.relay, token) as (ws, sse):
        job = example.export_report.delay(5, steps=4)
        for step in range(1, 5):
            update = {"job": job.id, "progress": step / 4}
            if step == 4:
                update["done"] = True
            await assert_both_receive(ws, sse, update)
    example.app.close()


# -- short-lived JWTs ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def jwt_relay(
    setup: Setup, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Wspush]:
    """A relay that takes only JWTs signed with SECRET, for examples given WSPUSH_JWT_SECRET."""
    relay = Wspush(
        tmp_path_factory.mktemp("examples-jwt"),
        "-redis",
        redis_server.address,
        "--jwt-secret",
        SECRET,
        "-prefix",
        PREFIX,
    ).start()
    yield relay
    with contextlib.suppress(Exception):
        relay.stop()


def assert_short_lived_jwt_for(token: str, sub: str) -> None:
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == sub
    assert claims["exp"] - claims["iat"] == 600


async def test_with_a_jwt_secret_each_example_hands_a_page_a_short_lived_jwt(
    setup: Setup, jwt_relay: Wspush, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WSPUSH_JWT_SECRET", SECRET)
    # Both relays of this module subscribe to the prefix: publishing reaches 2.
    flask_client = setup.example("flask_app").create_app().test_client()
    setup.example("django_app")
    import django
    from django.test import Client, override_settings

    django.setup()
    fastapi_app = setup.example("fastapi_app").app
    transport = httpx.ASGITransport(app=fastapi_app)
    async with (
        fastapi_app.router.lifespan_context(fastapi_app),
        httpx.AsyncClient(transport=transport, base_url="http://app") as fastapi_client,
    ):
        with override_settings(WSPUSH_JWT_SECRET=SECRET):
            django_client = Client()
            token = django_client.get("/push-token/3").json()["token"]
            assert_short_lived_jwt_for(token, "user:3")
            async with listeners(jwt_relay, token) as (ws, sse):
                response = django_client.post(
                    "/users/3/notify", data={"via": "django"}, content_type="application/json"
                )
                assert response.json() == {"relays": 2}
                await assert_both_receive(ws, sse, {"via": "django"})

        token = flask_client.get("/push-token/4").get_json()["token"]
        assert_short_lived_jwt_for(token, "user:4")
        async with listeners(jwt_relay, token) as (ws, sse):
            response = flask_client.post("/users/4/notify", json={"via": "flask"})
            assert response.get_json() == {"relays": 2}
            await assert_both_receive(ws, sse, {"via": "flask"})

        token = (await fastapi_client.get("/push-token/5")).json()["token"]
        assert_short_lived_jwt_for(token, "user:5")
        async with listeners(jwt_relay, token) as (ws, sse):
            response = await fastapi_client.post("/users/5/notify", json={"via": "fastapi"})
            assert response.json() == {"relays": 2}
            await assert_both_receive(ws, sse, {"via": "fastapi"})
