"""The demo page: with `--demo`, `GET /demo` shows a token's messages over SSE and WebSocket.

A person types a token and watches each transport's state, messages and heartbeats side
by side, with the `redis-cli PUBLISH` line to try it. The page is one static file with
no external assets (wspush/static/demo.html); the relay's settings that the page needs
are filled into an HTML attribute. It connects to `sse?token=…` and `./?token=…`
relative to its own URL, so it works wherever the app is mounted.

It grants nothing new: anyone who can reach `/demo` can reach `/sse` and `/` already,
and a token still has to be known (and signed, with `--hmac`). Its Content-Security-Policy
allows only its own inline script and style, and connections to its own origin.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import logging
import re
from importlib import resources

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from wspush.endpoints import AnyMethod, method_not_allowed
from wspush.settings import Settings

logger = logging.getLogger("wspush.demo")

DEMO_PATH = "/demo"
CONFIG_PLACEHOLDER = "{{config}}"


def demo_routes(settings: Settings) -> list[BaseRoute]:
    """The `/demo` route when `--demo` is on; none otherwise (then /demo is a WebSocket path)."""
    if not settings.demo:
        return []
    logger.info(
        "demo page on: open %s (GET %s, under the mount path when mounted)",
        demo_url(settings),
        DEMO_PATH,
    )
    return [Route(DEMO_PATH, AnyMethod(DemoPage(settings)))]


class DemoPage:
    """The page, rendered once per app with that app's settings."""

    def __init__(self, settings: Settings) -> None:
        template = resources.files("wspush").joinpath("static/demo.html").read_text("utf-8")
        config = {
            "prefix": settings.prefix,
            "ping": settings.ping,
            "pingInterval": settings.ping_interval,
            "wsFrame": settings.ws_frame,
            "signed": bool(settings.keys),
            "history": settings.history_size > 0,
            "jwt": settings.jwt_configured,
        }
        self.body = template.replace(CONFIG_PLACEHOLDER, html.escape(json.dumps(config)))
        self.headers = {
            "Content-Security-Policy": content_security_policy(template),
            "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
        }

    async def __call__(self, request: Request) -> Response:
        if request.method != "GET":
            return method_not_allowed()
        return HTMLResponse(self.body, headers=self.headers)


def content_security_policy(page: str) -> str:
    """Only the page's own inline script and style run, and it connects only to its origin."""
    scripts = " ".join(inline_hashes("script", page))
    styles = " ".join(inline_hashes("style", page))
    return (
        f"default-src 'none'; script-src {scripts}; style-src {styles}; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def inline_hashes(tag: str, page: str) -> list[str]:
    """CSP source expressions (`'sha256-…'`) for each inline `<tag>` element of the page."""
    pattern = re.compile(rf"<{tag}>(.*?)</{tag}>", re.DOTALL)
    return [f"'sha256-{sha256_base64(body)}'" for body in pattern.findall(page)]


def sha256_base64(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def demo_url(settings: Settings) -> str:
    """Where `-addr` puts the page, as a person would type it."""
    host = settings.host
    if host in ("0.0.0.0", "::"):
        host = "localhost"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}{DEMO_PATH}"
