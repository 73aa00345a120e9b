"""Prometheus metrics at /metrics (main listener and -expvar listener), from a real
relay with real clients and a real Redis."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import InvalidStatus

from tests.clients import SSEClient, receive, websocket
from tests.conftest import RedisServer, Wspush, free_port, wait_until
from wspush.stats import LATENCY_BUCKETS, LatencyHistogram

pytestmark = [pytest.mark.anyio, pytest.mark.both_servers]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """Every sample at `url`, keyed by (name, sorted labels)."""
    response = httpx.get(url, timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def test_a_delivery_shows_in_every_metric_on_both_listeners(
    spawn: Callable[..., Wspush], redis_server: RedisServer, token: str
) -> None:
    expvar = free_port()
    server = spawn("-redis", redis_server.address, "-expvar", f"127.0.0.1:{expvar}")
    async with (
        websocket(server.ws_url(token)) as ws,
        SSEClient(f"{server.url}/sse?token={token}") as sse,
    ):
        for n in range(3):
            redis_server.publish(f"example.{token}", f"m{n}")
        for n in range(3):
            assert await receive(ws) == f"m{n}".encode()
        assert await sse.wait_for(b"data:m2\n\n")
        main = scrape(f"{server.url}/metrics")
        side = scrape(f"http://127.0.0.1:{expvar}/metrics")

    for samples in (main, side):
        assert value(samples, "wspush_connections_open", transport="ws") == 1
        assert value(samples, "wspush_connections_open", transport="sse") == 1
        assert value(samples, "wspush_sessions_total") == 2
        assert value(samples, "wspush_redis_messages_total") == 3
        assert value(samples, "wspush_deliveries_total") == 6
        assert value(samples, "wspush_delivery_latency_seconds_count") == 6
        assert 0 < value(samples, "wspush_delivery_latency_seconds_sum") < 6
        assert value(samples, "wspush_sent_bytes_total") >= 3 * (2 + 2) + 3 * len(b"data:m0\n\n")
        assert value(samples, "wspush_redis_subscribed") == 1
        assert value(samples, "wspush_redis_connects_total") == 1
        assert value(samples, "wspush_messages_dropped_total", reason="queue_full") == 0
        assert value(samples, "wspush_connections_refused_total", reason="bad_token") == 0
        assert value(samples, "process_open_fds") > 0
        assert value(samples, "wspush_build_info", version=__import__("wspush").__version__) == 1


async def test_refusals_and_drops_are_counted_by_reason(
    spawn: Callable[..., Wspush], redis_server: RedisServer, token: str
) -> None:
    server = spawn(
        "-redis", redis_server.address, "--max-per-token", "1", "--max-message-size", "10"
    )
    with pytest.raises(InvalidStatus):
        async with websocket(server.ws_url("")):
            pass
    async with websocket(server.ws_url(token)) as ws:
        with pytest.raises(InvalidStatus):
            async with websocket(server.ws_url(token)):
                pass
        assert httpx.post(f"{server.url}/sse?token={token}", timeout=5).status_code == 405
        redis_server.publish(f"example.{token}", "x" * 11)  # over --max-message-size
        redis_server.publish(f"example.{token}", "small")
        assert await receive(ws) == b"small"
    samples = scrape(f"{server.url}/metrics")
    refused = {
        reason: value(samples, "wspush_connections_refused_total", reason=reason)
        for reason in ("bad_token", "token_limit", "method", "origin")
    }
    assert refused == {"bad_token": 1, "token_limit": 1, "method": 1, "origin": 0}
    assert value(samples, "wspush_messages_dropped_total", reason="too_large") == 1
    assert value(samples, "wspush_deliveries_total") == 1


async def test_redis_going_down_and_up_shows_in_the_subscription_metrics(
    spawn: Callable[..., Wspush], fresh_redis: RedisServer
) -> None:
    server = spawn("-redis", fresh_redis.address)
    fresh_redis.kill()

    def subscribed() -> float:
        return value(scrape(f"{server.url}/metrics"), "wspush_redis_subscribed")

    wait_until(lambda: subscribed() == 0, 10, "wspush_redis_subscribed 0")
    fresh_redis.start()
    wait_until(lambda: subscribed() == 1, 10, "wspush_redis_subscribed 1")
    samples = scrape(f"{server.url}/metrics")
    assert value(samples, "wspush_redis_connects_total") == 2
    assert value(samples, "wspush_redis_disconnects_total") == 1


async def test_heartbeats_are_counted(
    spawn: Callable[..., Wspush], redis_server: RedisServer, token: str
) -> None:
    server = spawn("-redis", redis_server.address, "--ping-interval", "0.2")
    async with SSEClient(f"{server.url}/sse?token={token}") as sse:
        assert await sse.wait_for(b"ping:\n\n")
        samples = scrape(f"{server.url}/metrics")
    assert value(samples, "wspush_heartbeats_total") >= 1
    assert value(samples, "wspush_sent_bytes_total") >= len(b"ping:\n\n")


async def test_metrics_path_still_serves_clients_that_ask_for_a_stream(
    relay: Wspush, redis_server: RedisServer, token: str
) -> None:
    async with (
        websocket(relay.ws_url(token, "/metrics")) as ws,
        SSEClient(
            f"{relay.url}/metrics?token={token}", headers={"Accept": "text/event-stream"}
        ) as sse,
    ):
        redis_server.publish(f"example.{token}", "hi")
        assert await receive(ws) == b"hi"
        assert await sse.wait_for(b"data:hi\n\n")


async def test_metrics_can_be_kept_off_the_main_listener(
    spawn: Callable[..., Wspush], redis_server: RedisServer
) -> None:
    expvar = free_port()
    server = spawn("-redis", redis_server.address, "--no-metrics", "-expvar", f"127.0.0.1:{expvar}")
    # Without metrics, /metrics is a WebSocket path like any other.
    assert httpx.get(f"{server.url}/metrics?token=t", timeout=5).status_code == 426
    assert "wspush_deliveries_total" in httpx.get(f"http://127.0.0.1:{expvar}/metrics").text


def test_latency_histogram_takes_a_batch_in_one_observation() -> None:
    histogram = LatencyHistogram()
    histogram.observe(0.0003, 10)
    histogram.observe(0.002)
    histogram.observe(100.0)  # beyond the last bound: +Inf
    assert sum(histogram.counts) == 12
    assert histogram.counts[LATENCY_BUCKETS.index(0.0005)] == 10
    assert histogram.counts[LATENCY_BUCKETS.index(0.0025)] == 1
    assert histogram.counts[-1] == 1
    assert histogram.total == pytest.approx(0.003 + 0.002 + 100.0)


async def test_every_connection_is_counted_once_whichever_path_answers_it(
    spawn: Callable[..., Wspush], redis_server: RedisServer, token: str
) -> None:
    """One admission: each attempt is one session, each refusal one count, whether the
    engine's task-free path or the ASGI endpoint answers it."""
    ok = "https://ok.example"
    server = spawn(
        "-redis", redis_server.address, "--max-per-token", "1", "--ws-origins", ok
    )  # fmt: skip
    for url, origin in [
        (server.ws_url(""), ok),  # 400
        (server.ws_url(token), "https://other.example"),  # 403
    ]:
        with pytest.raises(InvalidStatus):
            async with websocket(url, origin=origin):
                pass
    assert httpx.get(f"{server.url}/sse?token=", timeout=5).status_code == 400
    assert httpx.get(f"{server.url}/?token={token}", timeout=5).status_code == 426
    async with websocket(server.ws_url(token), origin=ok):
        with pytest.raises(InvalidStatus):
            async with websocket(server.ws_url(token), origin=ok):  # 429
                pass
        assert httpx.get(f"{server.url}/sse?token={token}", timeout=5).status_code == 429
        async with SSEClient(f"{server.url}/sse?token=other{token}") as sse:
            assert sse.status == 200
            samples = scrape(f"{server.url}/metrics")
    refused = {
        reason: value(samples, "wspush_connections_refused_total", reason=reason)
        for reason in ("bad_token", "origin", "not_websocket", "token_limit")
    }
    assert refused == {"bad_token": 2, "origin": 1, "not_websocket": 1, "token_limit": 2}
    assert value(samples, "wspush_sessions_total") == 8
