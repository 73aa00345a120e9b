"""A real browser against the real relay: headless Chromium (Debian's /usr/bin/chromium,
driven by Playwright) uses its own EventSource and WebSocket objects, and the demo page.

`.ci/run` installs the chromium package when it is missing; Playwright's own browser
download is never used.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright
from starlette.applications import Starlette
from starlette.routing import Mount

from tests.conftest import RedisServer, Wspush, free_port, wait_until
from tests.jwts import SECRET, signed
from tests.test_factory import ready, served
from wspush import Settings, create_app

ROOT = Path(__file__).parent.parent
CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags, Chromium's own connections to the (closed)
# internet make it refuse connections; a fresh profile comes from Playwright's launch().
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 10_000
MAX_PER_TOKEN = 15  # the default of --max-per-token
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Installed in a page served by the relay (so same-origin): the browser's own clients,
# recording what they see for the test to wait on.
HARNESS = """
() => {
  window.seen = [];    // [transport, data]
  window.events = [];  // [transport, event, readyState or close code]
  window.openSSE = (token) => {
    const es = new EventSource("/sse?token=" + encodeURIComponent(token));
    es.onopen = () => events.push(["sse", "open", es.readyState]);
    es.onerror = () => events.push(["sse", "error", es.readyState]);
    es.onmessage = (e) => seen.push(["sse", e.data]);
    window.es = es;
  };
  window.openWS = (token) => {
    const ws = new WebSocket("ws://" + location.host + "/?token=" + encodeURIComponent(token));
    ws.binaryType = "arraybuffer";
    ws.onopen = () => events.push(["ws", "open", ws.readyState]);
    ws.onclose = (e) => events.push(["ws", "close", e.code]);
    ws.onmessage = (e) => seen.push(
      ["ws", typeof e.data === "string" ? e.data : new TextDecoder().decode(e.data)]);
    window.ws = ws;
  };
  window.count = (transport, event) =>
    events.filter((e) => e[0] === transport && e[1] === event).length;
  window.received = (transport, data) =>
    seen.some((m) => m[0] === transport && m[1] === data);
}
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000
        )
        yield browser
        browser.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context(viewport={"width": 1280, "height": 820})
    context.set_default_timeout(WAIT_MS)
    yield context
    context.close()


def harness_page(context: BrowserContext, server: Wspush) -> Page:
    """A page on the relay's origin (its empty /ping answer) with the harness installed."""
    page = context.new_page()
    page.goto(server.url + "/ping")
    page.evaluate(HARNESS)
    return page


def wait_js(page: Page, condition: str, timeout: int = WAIT_MS) -> None:
    page.wait_for_function(condition, timeout=timeout)


def test_browser_eventsource_and_websocket_receive_published_messages(
    context: BrowserContext,
    spawn: Callable[..., Wspush],
    redis_server: RedisServer,
    token: str,
) -> None:
    server = spawn("-redis", redis_server.address)
    page = harness_page(context, server)
    page.evaluate("(token) => { openSSE(token); openWS(token); }", token)
    wait_js(page, "count('sse', 'open') === 1 && count('ws', 'open') === 1")

    redis_server.publish(f"example.{token}", "hello, browser")
    redis_server.publish(f"example.{token}", "line one\nline two")
    wait_js(page, "received('sse', 'hello, browser') && received('ws', 'hello, browser')")
    wait_js(page, "received('sse', 'line one\\nline two') && received('ws', 'line one\\nline two')")
    assert page.evaluate("seen.length") == 4


def test_browser_eventsource_reconnects_by_itself_after_a_restart(
    context: BrowserContext,
    spawn: Callable[..., Wspush],
    redis_server: RedisServer,
    token: str,
) -> None:
    server = spawn("-redis", redis_server.address, "--sse-retry", "200")
    page = harness_page(context, server)
    page.evaluate("(token) => openSSE(token)", token)
    wait_js(page, "count('sse', 'open') === 1")
    redis_server.publish(f"example.{token}", "before")
    wait_js(page, "received('sse', 'before')")

    assert server.stop() == 0
    # EventSource.CONNECTING: the browser is retrying, not giving up.
    wait_js(page, "events.some((e) => e[1] === 'error' && e[2] === EventSource.CONNECTING)")
    server.start()  # the same port

    wait_js(page, "count('sse', 'open') === 2 && es.readyState === EventSource.OPEN")
    redis_server.publish(f"example.{token}", "after the restart")
    wait_js(page, "received('sse', 'after the restart')")
    assert page.evaluate("es.readyState") == 1
    assert page.evaluate("count('sse', 'open')") == 2


def test_browser_fifteen_tabs_on_one_token_all_receive_and_a_sixteenth_is_refused(
    context: BrowserContext,
    spawn: Callable[..., Wspush],
    redis_server: RedisServer,
    token: str,
) -> None:
    """WebSockets, because a browser allows only 6 HTTP/1.1 connections per host: 15
    EventSources in one browser would leave 9 waiting for a free connection."""
    server = spawn("-redis", redis_server.address)
    tabs = [harness_page(context, server) for _ in range(MAX_PER_TOKEN)]
    for tab in tabs:
        tab.evaluate("(token) => openWS(token)", token)
    for tab in tabs:
        wait_js(tab, "count('ws', 'open') === 1")

    extra = harness_page(context, server)
    extra.evaluate("(token) => openWS(token)", token)
    # Refused with HTTP 429 before the upgrade, which a browser reports as close 1006.
    wait_js(extra, "count('ws', 'close') === 1")
    assert extra.evaluate("events") == [["ws", "close", 1006]]
    wait_until(lambda: "429 token already has 15" in server.log(), 5, "the 429 in the log")

    redis_server.publish(f"example.{token}", "to every tab")
    for tab in tabs:
        wait_js(tab, "received('ws', 'to every tab')")
    assert extra.evaluate("seen") == []


def test_browser_holds_a_seventh_eventsource_until_one_of_six_closes(
    context: BrowserContext,
    spawn: Callable[..., Wspush],
    redis_server: RedisServer,
    token: str,
) -> None:
    """What README's demo section warns of: 6 HTTP/1.1 connections per host, and an
    EventSource holds one for its whole life."""
    server = spawn("-redis", redis_server.address)
    page = harness_page(context, server)
    page.evaluate(
        """(token) => { window.sources = Array.from({length: 7}, () =>
             new EventSource("/sse?token=" + encodeURIComponent(token))); }""",
        token,
    )
    wait_js(page, "sources.filter((s) => s.readyState === EventSource.OPEN).length === 6")
    page.wait_for_timeout(1000)
    waiting = "sources.filter((s) => s.readyState === EventSource.CONNECTING).length"
    assert page.evaluate(waiting) == 1
    page.evaluate("sources.find((s) => s.readyState === EventSource.OPEN).close()")
    wait_js(page, "sources.filter((s) => s.readyState === EventSource.OPEN).length === 6")
    assert page.evaluate(waiting) == 0


def artifact_path(name: str) -> Path:
    """Where screenshots go: $WSPUSH_TEST_ARTIFACTS, else test-artifacts/ (git-ignored)."""
    directory = Path(os.environ.get("WSPUSH_TEST_ARTIFACTS") or ROOT / "test-artifacts")
    directory.mkdir(parents=True, exist_ok=True)
    return directory / name


def watch_console(page: Page) -> list[str]:
    """Console errors of the page (a CSP violation or a script error shows up here)."""
    errors: list[str] = []
    page.on(
        "console", lambda message: errors.append(message.text) if message.type == "error" else None
    )
    page.on("pageerror", lambda error: errors.append(str(error)))
    return errors


def connect_demo(page: Page, token: str) -> None:
    page.fill("#token", token)
    page.click("#connect")
    for pane in ("#sse", "#ws"):
        expect(page.locator(f"{pane} .state")).to_have_text("open", timeout=WAIT_MS)


def test_browser_demo_page_shows_messages_heartbeats_and_reconnects(
    context: BrowserContext,
    spawn: Callable[..., Wspush],
    redis_server: RedisServer,
    token: str,
) -> None:
    server = spawn(
        "-redis",
        redis_server.address,
        "--demo",
        "-ping",
        "heartbeat",
        "--ping-interval",
        "1",
        "--sse-retry",
        "200",
    )
    assert f"demo page on: open http://127.0.0.1:{server.port}/demo" in server.log()
    page = context.new_page()
    errors = watch_console(page)
    page.goto(server.url + "/demo")
    expect(page.locator("#publish-command")).to_have_text(
        "redis-cli PUBLISH example.<token> hello", timeout=WAIT_MS
    )
    connect_demo(page, token)
    expect(page.locator("#publish-command")).to_have_text(
        f"redis-cli PUBLISH example.{token} hello", timeout=WAIT_MS
    )

    hostile = "<b>not bold</b><img src=x onerror=alert(1)>"
    for message in ("hello", '{"event": "order.paid", "id": 42}', hostile):
        redis_server.publish(f"example.{token}", message)
    for pane in ("#sse", "#ws"):
        messages = page.locator(f"{pane} li.message .data")
        expect(messages).to_have_text(
            ["hello", '{"event": "order.paid", "id": 42}', hostile], timeout=WAIT_MS
        )
        expect(page.locator(f"{pane} .messages")).to_have_text("3", timeout=WAIT_MS)
        # Heartbeats carry the -ping payload: shown apart, never counted as messages.
        beat = page.locator(f"{pane} li.heartbeat").first
        beat.wait_for(timeout=WAIT_MS)
        assert beat.locator(".kind").text_content() == "heartbeat"
        expect(page.locator(f"{pane} .heartbeats")).not_to_have_text("0", timeout=WAIT_MS)
        assert page.locator(f"{pane} ol.log b, {pane} ol.log img").count() == 0
    expect(page.locator("#ws li.message .kind").first).to_have_text("binary 5 B")

    screenshot = artifact_path("demo.png")
    page.screenshot(path=str(screenshot))
    data = screenshot.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 10_000
    assert errors == []

    # A restart: WebSocket shows the 1001 close and this page reconnects it; EventSource
    # reconnects by itself. Both then get what is published next.
    assert server.stop() == 0
    expect(page.locator("#ws .state")).to_have_text("reconnecting", timeout=WAIT_MS)
    expect(page.locator("#ws .detail")).to_contain_text("1001", timeout=WAIT_MS)
    expect(page.locator("#sse .state")).to_have_text("reconnecting", timeout=WAIT_MS)
    server.start()
    for pane in ("#sse", "#ws"):
        expect(page.locator(f"{pane} .state")).to_have_text("open", timeout=WAIT_MS)
    redis_server.publish(f"example.{token}", "after the restart")
    for pane in ("#sse", "#ws"):
        expect(page.locator(f"{pane} li.message .data").last).to_have_text(
            "after the restart", timeout=WAIT_MS
        )
    page.screenshot(path=str(artifact_path("demo-after-restart.png")))
    # Nothing but the browser's failed attempts while the server was down.
    assert all("ERR_CONNECTION_REFUSED" in error for error in errors), errors


def test_browser_demo_page_works_mounted_under_a_path(
    context: BrowserContext, redis_server: RedisServer, token: str
) -> None:
    push = create_app(Settings(redis=redis_server.address, demo=True))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with push.state.relay.lifespan():
            yield

    parent = Starlette(routes=[Mount("/push", app=push)], lifespan=lifespan)
    with served(parent) as base:
        wait_until(lambda: ready(base, "/push/ready"), 10, "mounted wspush subscribed")
        page = context.new_page()
        errors = watch_console(page)
        page.goto(f"http://{base}/push/demo")
        connect_demo(page, token)
        expect(page.locator("#sse .url")).to_have_text(
            f"http://{base}/push/sse?token={token}", timeout=WAIT_MS
        )
        expect(page.locator("#ws .url")).to_have_text(
            f"ws://{base}/push/?token={token}", timeout=WAIT_MS
        )
        redis_server.publish(f"example.{token}", "mounted")
        for pane in ("#sse", "#ws"):
            expect(page.locator(f"{pane} li.message .data")).to_have_text(
                ["mounted"], timeout=WAIT_MS
            )
        page.click("#disconnect")
        for pane in ("#sse", "#ws"):
            expect(page.locator(f"{pane} .state")).to_have_text("closed", timeout=WAIT_MS)
        assert errors == []


# -- tokens that expire --------------------------------------------------------------------


def test_browser_sees_the_expiry_event_and_close_code_when_a_jwt_expires(
    context: BrowserContext, spawn: Callable[..., Wspush], redis_server: RedisServer, token: str
) -> None:
    server = spawn("-redis", redis_server.address, "--jwt-secret", SECRET, "--jwt-leeway", "0")
    page = harness_page(context, server)
    page.evaluate(
        """(token) => {
          openSSE(token); openWS(token);
          es.addEventListener("wspush-expired", (e) => events.push(["sse", "expired", e.data]));
          ws.addEventListener("close", (e) => events.push(["ws", "reason", e.reason]));
        }""",
        signed({"sub": token, "exp": int(time.time()) + 2}),
    )
    wait_js(page, "count('sse', 'open') === 1 && count('ws', 'open') === 1")
    redis_server.publish(f"example.{token}", "before expiry")
    wait_js(page, "received('sse', 'before expiry') && received('ws', 'before expiry')")
    wait_js(page, "count('sse', 'expired') === 1 && count('ws', 'close') === 1", 5_000)
    seen = page.evaluate("events")
    assert ["sse", "expired", "token expired"] in seen
    assert ["ws", "close", 1008] in seen
    assert ["ws", "reason", "token expired"] in seen


def readme_renewal_snippet() -> str:
    """The README's JavaScript that renews a JWT, with its fetch of a fresh token and the
    relay's address replaced by the test's."""
    readme = (ROOT / "README.md").read_text()
    blocks = readme.split("```js\n")
    (snippet,) = [block.split("```")[0] for block in blocks if "function listen(" in block]
    start = snippet.index("function expiryOf")
    return snippet[start:].replace("https://push.example.com", "")


def test_browser_runs_the_readme_renewal_and_keeps_receiving_across_expiries(
    context: BrowserContext, spawn: Callable[..., Wspush], redis_server: RedisServer, token: str
) -> None:
    server = spawn("-redis", redis_server.address, "--jwt-secret", SECRET, "--jwt-leeway", "0")
    page = context.new_page()
    page.goto(server.url + "/ping")
    issued: list[str] = []

    def mint() -> str:  # the backend's /push-token: a JWT that lives 2 s
        issued.append(signed({"sub": token, "exp": int(time.time()) + 2}))
        return issued[-1]

    page.expose_function("mintToken", mint)
    listening = readme_renewal_snippet().replace(
        'listen((data) => console.log("message", data));', "listen((data) => got.push(data));"
    )
    page.add_script_tag(
        content="window.got = [];\nasync function freshToken() { return await mintToken(); }\n"
        + listening
    )
    wait_js(page, "typeof listen === 'function'")
    sent = []
    deadline = time.monotonic() + 5  # several tokens' lifetimes
    while time.monotonic() < deadline:
        sent.append(f"message {len(sent)}")
        redis_server.publish(f"example.{token}", sent[-1])
        page.wait_for_timeout(250)  # (not time.sleep: mintToken answers only while this waits)
    wait_js(page, f"got.includes({json.dumps(sent[-1])})")
    got = page.evaluate("got")
    assert len(issued) >= 3
    missed = [message for message in sent[2:] if message not in got]
    assert not missed, (missed, got)


def test_browser_demo_page_routes_a_jwt_by_its_sub_and_says_when_it_expired(
    context: BrowserContext, spawn: Callable[..., Wspush], redis_server: RedisServer, token: str
) -> None:
    server = spawn(
        "-redis", redis_server.address, "--demo", "--jwt-secret", SECRET, "--jwt-leeway", "0"
    )
    page = context.new_page()
    errors = watch_console(page)
    page.goto(server.url + "/demo")
    expect(page.locator("#token-note")).to_contain_text("This relay takes JWTs")
    connect_demo(page, signed({"sub": token, "exp": int(time.time()) + 3}))
    expect(page.locator("#publish-command")).to_have_text(
        f"redis-cli PUBLISH example.{token} hello", timeout=WAIT_MS
    )
    redis_server.publish(f"example.{token}", "for the sub")
    for pane in ("#sse", "#ws"):
        expect(page.locator(f"{pane} li.message .data")).to_have_text(["for the sub"])
    expect(page.locator("#sse .state")).to_have_text("closed", timeout=WAIT_MS)
    expect(page.locator("#sse ol.log")).to_contain_text("the token expired")
    expect(page.locator("#ws ol.log")).to_contain_text("1008 \u201ctoken expired\u201d")
    assert errors == [], errors


class HistoryPublisher:
    """Publishes `count` numbered messages with history, one every `interval` seconds,
    from a thread, while the test restarts the relays."""

    def __init__(self, redis_server: RedisServer, token: str, count: int, interval: float) -> None:
        import threading

        self.channel = f"example.{token}".encode()
        self.count = count
        self.interval = interval
        self.redis_server = redis_server
        self.published: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from wspush.history import publish_with_history

        with self.redis_server.client() as client:
            for n in range(self.count):
                publish_with_history(client, self.channel, b"m%d" % n, 1000, 600)
                self.published.append(f"m{n}")
                time.sleep(self.interval)

    def __enter__(self) -> HistoryPublisher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()


def test_browser_eventsource_loses_nothing_across_a_restart_with_history(
    context: BrowserContext,
    spawn: Callable[..., Wspush],
    redis_server: RedisServer,
    token: str,
) -> None:
    """A deploy under a continuous publisher: the page's EventSource, with no line of
    resume code, ends with every message exactly once, in order."""
    server = spawn("-redis", redis_server.address, "--history-size", "1000", "--sse-retry", "200")
    page = harness_page(context, server)
    page.evaluate("(token) => openSSE(token)", token)
    wait_js(page, "count('sse', 'open') === 1")
    with HistoryPublisher(redis_server, token, count=300, interval=0.01) as publisher:
        wait_js(page, "seen.length >= 30")
        assert server.stop() == 0
        server.start()
    expected = publisher.published
    wait_js(page, f"seen.length >= {len(expected)}", timeout=20_000)
    time.sleep(0.3)  # anything extra would show now
    assert page.evaluate("seen.map((m) => m[1])") == expected
    assert page.evaluate("count('sse', 'open')") >= 2


def test_browser_loses_nothing_across_a_rolling_restart_of_two_instances_behind_nginx(
    context: BrowserContext,
    spawn: Callable[..., Wspush],
    redis_server: RedisServer,
    token: str,
    tmp_path: Path,
) -> None:
    from tests.test_nginx import Nginx, render_site

    flags = ("-redis", redis_server.address, "--history-size", "1000", "--sse-retry", "200")
    relays = [spawn(*flags) for _ in range(2)]
    port = free_port()
    nginx = Nginx(tmp_path / "nginx", port, render_site(port, [r.port for r in relays])).start()
    try:
        page = context.new_page()
        page.goto(nginx.url + "/ping")
        page.evaluate(HARNESS)
        page.evaluate(
            "(token) => { for (let i = 0; i < 4; i++) window['es' + i] = "
            "new EventSource('/sse?token=' + token); }",
            token,
        )
        page.evaluate(
            """() => { window.streams = [0, 1, 2, 3].map((i) => {
                 const got = []; window['es' + i].onmessage = (e) => got.push(e.data);
                 return got; }); }"""
        )
        # Open (subscribed) before the first message: a stream opened after it would
        # start, rightly, without it.
        wait_js(page, "[0, 1, 2, 3].every((i) => window['es' + i].readyState === 1)")
        with HistoryPublisher(redis_server, token, count=400, interval=0.01) as publisher:
            wait_js(page, "streams.every((s) => s.length >= 20)")
            for relay in relays:  # one after the other, as a rolling deploy does
                assert relay.stop() == 0
                relay.start()
                relay.wait_ready()
        expected = publisher.published
        try:
            wait_js(page, f"streams.every((s) => s.length >= {len(expected)})", timeout=30_000)
        except Exception:
            got = page.evaluate("streams")
            raise AssertionError(
                [(len(g), [m for m in expected if m not in g][:5], g[:3]) for g in got]
                + [relay.log()[-3000:] for relay in relays]
            ) from None
        time.sleep(0.3)
        assert page.evaluate("streams") == [expected] * 4
    finally:
        nginx.stop()
