"""What ids cost on the live path: the hub's time per published message, history off and
on, side by side in one process.

A message published with history arrives in an envelope (see `wspush.history`): the hub
opens it, and each connection checks that it follows the one before. This measures
`Hub.publish` for one token with `--fanout` connections whose writers take everything
(no sockets: the cost of the hub alone), for:

- `off`: history off, plain PUBLISH messages (today's path);
- `on, plain`: history on, plain PUBLISH messages (no id: one check more);
- `on, ids`: history on, messages with ids, each following the one before.

    python bench/history_cost.py --fanout 10 --messages 200000 --repeats 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wspush.history import ENVELOPE, channel_tag
from wspush.hub import Hub, Message
from wspush.resume import Resumer
from wspush.stats import Stats

TOKEN = b"alice"


class NullWriter:
    """A direct writer that is always ready and drops what it is given."""

    chunked = False

    def ready(self) -> bool:
        return True

    def is_open(self) -> bool:
        return True

    def write(self, data: bytes) -> None:
        pass

    async def wait_writable(self) -> None:
        pass

    def kick(self, code: int) -> None:
        pass


class NullSink:
    def __init__(self) -> None:
        self.writer = NullWriter()

    async def send(self, items: list[bytes]) -> int:
        return 0

    async def end(self, reason: Any) -> None:
        pass

    def kick(self, code: int) -> None:
        pass


def payloads(count: int, with_ids: bool) -> list[bytes]:
    """`count` 64-byte messages, in envelopes whose ids follow each other when asked."""
    tag = channel_tag(b"example." + TOKEN)
    body = b"x" * 64
    if not with_ids:
        return [body] * count
    ids = [b"%d-0.1-0.%s" % (n + 1, tag) for n in range(count)]
    previous = [b"-", *ids[:-1]]
    return [ENVELOPE + ids[n] + b" " + previous[n] + b"\n" + body for n in range(count)]


async def measure(fanout: int, count: int, history: bool, with_ids: bool) -> float:
    """Nanoseconds of `Hub.publish` per message."""
    stats = Stats()
    hub = Hub(fanout, 100, stats)
    if history:

        async def subscribed(token: bytes) -> None:
            return None

        hub.resumer = Resumer(None, b"example.", stats, 100, subscribed)
    for _ in range(fanout):
        subscription = hub.subscribe(TOKEN, _transport())
        subscription.attach(NullSink(), Message.sse.fget)  # type: ignore[arg-type, attr-defined]
        if history:
            subscription.history = hub.resumer
            subscription.position = None
    messages = payloads(count, with_ids)
    publish = hub.publish
    flush = hub.batch.flush
    started = time.perf_counter_ns()
    for start in range(0, count, 100):  # a Redis read brings many; one flush after each
        for payload in messages[start : start + 100]:
            publish(TOKEN, payload)
        flush()
    elapsed = time.perf_counter_ns() - started
    assert stats.successful_deliveries == fanout * count, stats.successful_deliveries
    return elapsed / count


def _transport() -> Any:
    from wspush.hub import Transport

    return Transport.SSE


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fanout", type=int, default=10)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cases = {"off": (False, False), "on, plain": (True, False), "on, ids": (True, True)}
    results: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):  # interleaved, so the machine's noise hits all alike
        for name, (history, with_ids) in cases.items():
            results[name].append(await measure(args.fanout, args.messages, history, with_ids))
    print(
        f"# Hub.publish, one token, {args.fanout} connections, {args.messages} SSE messages "
        f"of 64 B, median of {args.repeats} interleaved runs"
    )
    base = statistics.median(results["off"])
    for name, values in results.items():
        median = statistics.median(values)
        print(
            f"{name:<10} {median:8.0f} ns/message  {median / args.fanout:6.0f} ns/delivery"
            f"  ({median / base:.2f}x)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
