"""`--demo` serves the demo page at GET /demo and changes nothing else; without it, /demo
is a WebSocket path like any other. (The page itself runs in tests/test_browser.py.)"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable

import httpx
import pytest

from tests.clients import receive, websocket
from tests.conftest import RedisServer, Wspush
from wspush import Settings, create_app
from wspush.demo import demo_url, sha256_base64

pytestmark = pytest.mark.anyio


async def test_without_demo_the_demo_path_is_a_websocket_path_as_before(
    spawn: Callable[..., Wspush], redis_server: RedisServer, token: str
) -> None:
    server = spawn("-redis", redis_server.address)
    assert httpx.get(f"{server.url}/demo", timeout=5).status_code == 400
    answer = httpx.get(f"{server.url}/demo?token={token}", timeout=5)
    assert answer.status_code == 426
    assert answer.headers["upgrade"] == "websocket"
    async with websocket(server.ws_url(token, "/demo")) as ws:
        redis_server.publish(f"example.{token}", "still a websocket path")
        assert await receive(ws) == b"still a websocket path"
    assert "demo page" not in server.log()


async def test_demo_serves_the_page_and_leaves_websockets_on_its_path_alone(
    spawn: Callable[..., Wspush], redis_server: RedisServer, token: str
) -> None:
    server = spawn("-redis", redis_server.address, env={"WSPUSH_DEMO": "true"})
    assert f"demo page on: open http://127.0.0.1:{server.port}/demo" in server.log()
    page = httpx.get(f"{server.url}/demo", timeout=5)
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "<title>wspush demo</title>" in page.text
    # Self-contained: nothing is loaded from anywhere else.
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text)
    for method in ("POST", "HEAD", "OPTIONS"):
        refused = httpx.request(method, f"{server.url}/demo", timeout=5)
        assert refused.status_code == 405, method
        assert refused.headers["allow"] == "GET"
    async with websocket(server.ws_url(token, "/demo")) as ws:
        redis_server.publish(f"example.{token}", "websocket on /demo")
        assert await receive(ws) == b"websocket on /demo"


async def test_demo_page_csp_allows_exactly_its_own_inline_script_and_style() -> None:
    app = create_app(Settings(demo=True))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://wspush"
    ) as client:
        page = await client.get("/demo")
    policy = page.headers["content-security-policy"]
    (script,) = re.findall(r"<script>(.*?)</script>", page.text, re.DOTALL)
    (style,) = re.findall(r"<style>(.*?)</style>", page.text, re.DOTALL)
    assert f"script-src 'sha256-{sha256_base64(script)}';" in policy
    assert f"style-src 'sha256-{sha256_base64(style)}';" in policy
    assert "default-src 'none'" in policy
    assert "connect-src 'self'" in policy
    assert "innerHTML" not in script
    assert "insertAdjacentHTML" not in script


async def test_demo_page_settings_are_escaped_into_one_attribute() -> None:
    prefix = "\"><script>alert('prefix')</script>&."
    app = create_app(Settings(demo=True, prefix=prefix, ping="<hb>", ws_frame="text"))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://wspush"
    ) as client:
        page = await client.get("/demo")
    assert page.text.count("<script>") == 1
    (attribute,) = re.findall(r'<body data-config="([^"]*)">', page.text)
    config = json.loads(html.unescape(attribute))
    assert config == {
        "prefix": prefix,
        "ping": "<hb>",
        "pingInterval": 45.0,
        "wsFrame": "text",
        "signed": False,
        "history": False,
        "jwt": False,
    }


def test_demo_url_is_what_a_person_would_open() -> None:
    assert demo_url(Settings()) == "http://localhost:8080/demo"
    assert demo_url(Settings(addr=":9000")) == "http://localhost:9000/demo"
    assert demo_url(Settings(addr="[::1]:9000")) == "http://[::1]:9000/demo"
    assert demo_url(Settings(addr="10.0.0.5:80")) == "http://10.0.0.5:80/demo"
