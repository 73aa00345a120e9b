"""What wspush logs: settings at start-up (secrets hidden), state changes, refusals
(summarised in storms), nothing per message or accepted connection; text or JSON."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import pytest
from websockets.exceptions import InvalidStatus

from tests.clients import receive, websocket
from tests.conftest import RedisServer, Wspush, wait_until
from wspush.logs import JSONFormatter, RefusalLog

pytestmark = [pytest.mark.anyio, pytest.mark.both_servers]

KEY = "c2VjcmV0LWtleS1mb3ItdGVzdHM"


def json_lines(server: Wspush) -> list[dict[str, object]]:
    return [json.loads(line) for line in server.log().splitlines() if line.strip()]


async def test_json_lines_carry_settings_state_changes_and_refusals_only(
    spawn: Callable[..., Wspush], fresh_redis: RedisServer, token: str
) -> None:
    server = spawn("-redis", fresh_redis.address, "-hmac", KEY, "--log-format", "json")
    with pytest.raises(InvalidStatus):
        async with websocket(server.ws_url(token)):  # unsigned: refused with 400
            pass
    lines = json_lines(server)  # every line parses as JSON
    started = next(line for line in lines if str(line["message"]).startswith("wspush started"))
    assert started["level"] == "info"
    assert started["logger"] == "wspush"
    settings = started["settings"]
    assert isinstance(settings, dict)
    assert settings["hmac"] == "<redacted>"
    assert KEY not in server.log()
    assert settings["redis"] == fresh_redis.url
    refusal = next(line for line in lines if line.get("refusal") == "refused_bad_token")
    assert "400" in str(refusal["message"])

    fresh_redis.kill()
    wait_until(lambda: server.status("/ready") == 503, 10, "ready 503")
    assert any("redis" in str(line["logger"]) for line in json_lines(server)[len(lines) :])


async def test_deliveries_and_accepted_connections_log_nothing_at_the_default_level(
    spawn: Callable[..., Wspush], redis_server: RedisServer, token: str
) -> None:
    server = spawn("-redis", redis_server.address)
    before = server.log()
    for _ in range(5):
        async with websocket(server.ws_url(token)) as ws:
            redis_server.publish(f"example.{token}", "quiet")
            assert await receive(ws) == b"quiet"
    assert server.log() == before


async def test_a_storm_of_refusals_is_summarised(
    spawn: Callable[..., Wspush], redis_server: RedisServer
) -> None:
    server = spawn("-redis", redis_server.address)
    for _ in range(30):
        with pytest.raises(InvalidStatus):
            async with websocket(server.ws_url("")):
                pass
    refusal_lines = [line for line in server.log().splitlines() if "refused" in line]
    assert len(refusal_lines) == 1
    assert "ERROR" not in server.log()  # a refusal is not a server error


def test_refusal_log_says_how_many_it_held_back(caplog: pytest.LogCaptureFixture) -> None:
    log = RefusalLog(interval=0.0)
    quiet = RefusalLog(interval=3600.0)
    with caplog.at_level(logging.INFO, logger="wspush"):
        for _ in range(3):
            quiet.refused("bad_token", "refused %s", "x")
        quiet._last["bad_token"] -= 7200  # as if the interval had passed
        quiet.refused("bad_token", "refused %s", "x")
        log.refused("origin", "refused %s", "y")
    messages = [record.getMessage() for record in caplog.records]
    assert messages[0] == "refused x"
    assert messages[1].startswith("refused x (and 2 more refused for this reason in the last ")
    assert messages[2] == "refused y"


def test_json_formatter_keeps_extra_fields_and_exceptions() -> None:
    record = logging.makeLogRecord(
        {"name": "wspush", "levelname": "WARNING", "msg": "a %s", "args": ("b",), "extra_field": 1}
    )
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    entry = json.loads(JSONFormatter().format(record))
    assert entry["message"] == "a b"
    assert entry["level"] == "warning"
    assert entry["extra_field"] == 1
    assert "ValueError: boom" in entry["exception"]
    assert entry["time"].endswith("Z")
