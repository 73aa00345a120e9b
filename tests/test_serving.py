"""How wspush serves: the engine when the installed packages offer what it needs, and
plain ASGI through uvicorn's stock protocols, with one warning, when they do not."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.clients import RawWebSocket, SSEClient, receive, websocket
from tests.conftest import RedisServer, Wspush
from wspush.engine import compat
from wspush.serving import ENGINE, uvicorn_options
from wspush.settings import Settings

pytestmark = pytest.mark.anyio

DRIVER = Path(__file__).with_name("engine_fallback_driver.py")
FALLBACK = "serving through uvicorn's stock protocols"


def test_the_installed_packages_run_the_engine() -> None:
    assert compat.problem() is None
    options = uvicorn_options(Settings())
    assert (options["http"], options["ws"]) == (ENGINE["http"], ENGINE["ws"])
    assert options["ws_ping_interval"] is None  # wspush's own timer sends the pings


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("new-attribute", "added_upstream"),
        ("newer-uvicorn", "uvicorn 0.55.0 is outside"),
    ],
)
async def test_an_upstream_change_the_engine_was_not_checked_against_falls_back_to_plain_asgi(
    tmp_path: Path, redis_server: RedisServer, token: str, change: str, named: str
) -> None:
    """One warning naming what changed, then the same service over uvicorn's stock
    protocols: WebSocket and SSE deliver, nothing is logged as an error."""
    relay = Wspush(
        tmp_path, "-redis", redis_server.address, "--ping-interval", "0.5",
        launcher=(str(DRIVER), change),
    ).start()  # fmt: skip
    try:
        async with (
            websocket(relay.ws_url(token)) as ws,
            SSEClient(f"{relay.url}/sse?token={token}") as sse,
        ):
            redis_server.publish(f"example.{token}", "still served")
            assert await receive(ws) == b"still served"
            await sse.wait_for(b"data:still served\n\n")
        # The WebSocket Ping frames are uvicorn's keep-alive now, at wspush's interval.
        raw = await RawWebSocket.open(relay.port, f"/?token={token}")
        opcode, _ = await raw.frame(timeout=5)
        assert opcode == 0x9
        raw.close()
    finally:
        assert relay.stop() == 0
    log = relay.log()
    warnings = [line for line in log.splitlines() if FALLBACK in line]
    assert len(warnings) == 1, log
    assert named in warnings[0]
    assert "ERROR" not in log, log
    assert "Traceback" not in log, log


def test_the_engine_names_what_it_checks_in_every_module() -> None:
    """Each engine module says which upstream names it touches, and against what."""
    engine = Path(compat.__file__).parent
    for path in engine.glob("*.py"):
        if path.name in {"__init__.py", "compat.py"}:
            continue
        docstring = path.read_text().split('"""')[1]
        assert "Upstream touched" in docstring, path.name
        assert "checked against" in docstring or "Upstream touched: none" in docstring, path.name


def test_a_spawned_relay_runs_the_engine(
    spawn: Callable[..., Wspush], redis_server: RedisServer
) -> None:
    relay = spawn("-redis", redis_server.address)
    relay.stop()
    assert FALLBACK not in relay.log()
