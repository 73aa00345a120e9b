"""A publish flood against Redis's own output-buffer limit for subscribers.

Redis cuts a subscriber whose unread output passes `client-output-buffer-limit pubsub`.
The relay must keep reading, shed what it cannot deliver (counted, per connection),
never lose the subscription, and be back to normal as soon as the flood ends.
`bench/flood.py` measures the same at full scale; this is the test-sized version.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import RedisServer, Wspush, free_port, wait_until

pytestmark = pytest.mark.anyio

# Redis's default limit, stated so that a changed default cannot weaken the test.
LIMIT = "pubsub 32mb 8mb 60"
CLIENTS = 20


class CountingSSEReader:
    """An SSE client that only counts events, at socket speed (no parsing per event)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.events = 0
        self.seen: dict[bytes, float] = {}  # marked messages -> when they arrived
        self.task = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, port: int, token: str) -> CountingSSEReader:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /sse?token={token} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200"), head
        return cls(reader, writer)

    async def _read(self) -> None:
        tail = b""
        while data := await self.reader.read(1 << 20):
            window = tail + data  # "data:" is 5 bytes: one split across reads is seen once
            self.events += window.count(b"data:")
            for marker in (b"mark-",):
                start = window.find(marker)
                while start != -1:
                    end = window.find(b"\n", start)
                    if end == -1:
                        break
                    self.seen.setdefault(window[start:end], time.monotonic())
                    start = window.find(marker, end)
            tail = window[-4:]

    def close(self) -> None:
        self.task.cancel()
        self.writer.close()


def rss_kb(server: Wspush) -> int:
    assert server.process is not None
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])


def flood(redis: RedisServer, channel: str, messages: int) -> None:
    """PUBLISH at full speed from C (redis-benchmark, from Redis's own tools).

    It runs at a lower priority: publishers run on other machines, and on a 2-core test
    machine it would otherwise take the relay's core, which is not what is tested."""
    benchmark = shutil.which("redis-benchmark")
    assert benchmark, "redis-benchmark (Debian: redis-tools) is needed for the flood test"
    subprocess.run(
        [
            benchmark,
            "-p",
            str(redis.port),
            "-n",
            str(messages),
            "-c",  # one publisher connection with 1,000 commands in flight, as the
            "1",  # reference harness's publisher (bench/flood.py)
            "-P",
            "1000",
            "-q",
            "PUBLISH",
            channel,
            "flood-payload-of-about-sixty-four-bytes-xxxxxxxxxxxxxxxxxxxxxx",
        ],
        check=True,
        capture_output=True,
        timeout=120,
        preexec_fn=lambda: os.nice(10),
    )


ROUND = 600_000  # messages per flood round: about 66 MB of Redis output, twice the limit


@pytest.mark.parametrize(
    "rounds",
    [
        pytest.param(1, id="short"),
        # Twelve floods 0.5 s apart: a long storm, checked for bounded memory and exact
        # accounting throughout. (One flood that outruns hiredis's parse rate for good,
        # about 1.1 M messages/s here, would end in a cut whatever the relay does.)
        pytest.param(12, marks=pytest.mark.soak, id="long"),
    ],
)
async def test_a_flood_is_shed_and_counted_and_never_costs_the_subscription(
    tmp_path: Path, spawn: Callable[..., Wspush], token: str, rounds: int
) -> None:
    redis = RedisServer(tmp_path / "redis", None, "--client-output-buffer-limit", LIMIT).start()
    try:
        expvar = free_port()
        server = spawn(
            "-redis",
            redis.address,
            "-expvar",
            f"127.0.0.1:{expvar}",
            "--max-per-token",
            str(CLIENTS),
            "--max-drops",
            "0",
        )

        def stats() -> dict[str, int]:
            return httpx.get(f"http://127.0.0.1:{expvar}/debug/vars", timeout=5).json()["wspush"]  # type: ignore[no-any-return]

        readers = [await CountingSSEReader.open(server.port, token) for _ in range(CLIENTS)]
        try:
            rss_before = rss_kb(server)
            messages = ROUND * rounds
            for _ in range(rounds):
                await asyncio.to_thread(flood, redis, f"example.{token}", ROUND)
                await asyncio.sleep(0.5)

            expected = messages * CLIENTS
            lost = ("dropped_flood", "dropped_queue_full")

            def accounted() -> bool:
                now = stats()
                return now["successful_deliveries"] + sum(now[k] for k in lost) == expected

            try:
                await asyncio.to_thread(wait_until, accounted, 30, "every delivery made or counted")
            except TimeoutError:
                raise AssertionError(f"{expected=} {stats()}\n{server.log()}") from None
            after = stats()
            assert after["redis_disconnects"] == 0  # Redis never cut the subscription
            assert rss_kb(server) - rss_before < 64 * 1024  # the excess was not kept
            assert after["messages_seen"] == messages
            assert after["dropped_flood"] > 0  # it was a flood: the relay had to shed
            delivered = after["successful_deliveries"]
            await asyncio.to_thread(
                wait_until,
                lambda: sum(r.events for r in readers) == delivered,
                30,
                "clients to receive what the relay says it delivered",
            )

            # Right after the flood: back to normal latency for every client.
            lags = []
            for seq in range(10):
                sent = time.monotonic()
                redis.publish(f"example.{token}", f"mark-{seq}")
                marker = b"mark-%d" % seq
                await asyncio.to_thread(
                    wait_until, lambda m=marker: all(m in r.seen for r in readers), 5, "a marker"
                )
                lags.append(max(r.seen[marker] for r in readers) - sent)
                await asyncio.sleep(0.05)
            assert max(lags) < 0.5, lags
        finally:
            for reader in readers:
                reader.close()
    finally:
        redis.kill()
