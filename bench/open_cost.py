"""The Python cost of opening a connection on wspush's engine, without sockets.

`setup_cost.py` counts a whole server's instructions and `setup_split.py` its user and
kernel time, sockets and all. This measures the part that is wspush's own Python: a
real relay (its app, hub and Redis subscriber, under uvicorn with wspush's protocols)
runs in-process, and the protocol class uvicorn would build for each connection is
driven as uvloop drives it (built, `connection_made`, `data_received` with the whole
first head), on a stand-in transport whose `write` keeps nothing. What is left out is
uvloop's accept and transport, the system calls and the kernel: the rest of what a
connection costs, and the same for any Python server (`bench/protocol_floor.py`).

Each repetition is a fresh process, so one checkout's figure is not warmed by another's;
rounds alternate the checkouts, and medians are printed at the end. Run it for the
current checkout, or compare others side by side (each a directory that holds a
`wspush` package), for example a worktree of an earlier commit:

    python bench/open_cost.py --tree /tmp/before --label before --tree . --label after

It needs a `redis-server` (started here on a free port, as the tests do).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CHECKOUT = Path(__file__).resolve().parent.parent
WARM_UP = 200  # connections opened before timing starts


class StandInTransport:
    """What wspush's protocols ask of a uvloop TCP transport, with nothing behind it."""

    __slots__ = ("peer", "protocol")

    def __init__(self, number: int) -> None:
        self.peer = ("127.0.0.1", 10_000 + number % 50_000)
        self.protocol: Any = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return ("127.0.0.1", 8080)
        if name == "peername":
            return self.peer
        return default

    def write(self, data: bytes) -> None:
        pass

    def writelines(self, data: Any) -> None:
        pass

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_protocol(self) -> Any:
        return self.protocol

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def first_head(mode: str, number: int) -> bytes:
    """The head the harness's loadgen sends, for connection `number` (its own token)."""
    if mode == "ws":
        return (
            b"GET /?token=t%d HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n" % number
        )
    return (
        b"GET /sse?token=t%d HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
        b"Accept: text/event-stream\r\n\r\n" % number
    )


async def measure(mode: str, connections: int, redis_address: str) -> dict[str, float]:
    """Open `connections` streams on an in-process relay; CPU and wall µs per connection."""
    from wspush.cli import parse
    from wspush.factory import create_app
    from wspush.serving import DrainingServer, tune_garbage_collector, uvicorn_config

    flags = ["-addr", "127.0.0.1:0", "-redis", redis_address, "-prefix", "open-cost."]
    settings, _ = parse([*flags, "--max-per-token", str(connections + WARM_UP)])
    app = create_app(settings)
    tune_garbage_collector()
    server = DrainingServer(uvicorn_config(settings, app), app.state.relay)
    serving = asyncio.create_task(server.serve())
    async with asyncio.timeout(30):
        while not server.started:  # noqa: ASYNC110  (uvicorn's Server has no event for it)
            await asyncio.sleep(0.05)
    protocol_class = server.config.http_protocol_class
    loop = asyncio.get_running_loop()
    total = WARM_UP + connections
    heads = [first_head(mode, number) for number in range(total)]
    transports = [StandInTransport(number) for number in range(total)]

    def open_connections(first: int, last: int) -> None:
        for number in range(first, last):
            protocol = protocol_class(  # as uvicorn's Server builds one per connection
                config=server.config,
                server_state=server.server_state,
                app_state=server.lifespan.state,
                _loop=loop,
            )
            transport = transports[number]
            transport.protocol = protocol
            protocol.connection_made(transport)
            protocol.data_received(heads[number])

    open_connections(0, WARM_UP)
    wall, cpu = time.perf_counter(), time.process_time()
    open_connections(WARM_UP, total)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    opened = app.state.relay.stats.connections_open
    server.should_exit = True
    await serving
    if opened != total:
        raise RuntimeError(f"only {opened} of {total} connections opened")
    return {"cpu_us": cpu / connections * 1e6, "wall_us": wall / connections * 1e6}


def child(args: argparse.Namespace) -> int:
    import uvloop

    result = uvloop.run(measure(args.mode, args.connections, args.redis))
    print(json.dumps(result))
    return 0


def run_child(tree: Path, mode: str, connections: int, redis_address: str) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", "--mode", mode]
    command += ["-n", str(connections), "--redis", redis_address]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"{tree}: {done.stderr.strip()[-2000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", type=Path, help="a directory with wspush/")
    parser.add_argument("--label", action="append", help="a name per --tree, in order")
    parser.add_argument("--modes", default="ws,sse", help="transports: ws, sse (default both)")
    parser.add_argument("-n", "--connections", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=5, help="processes per tree and mode")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="ws", help=argparse.SUPPRESS)
    parser.add_argument("--redis", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    sys.path.insert(0, str(CHECKOUT))
    from tests.conftest import RedisServer

    trees = [tree.resolve() for tree in args.tree or [CHECKOUT]]
    labels = args.label or [tree.name for tree in trees]
    if len(labels) != len(trees):
        parser.error("give one --label per --tree")
    modes = args.modes.split(",")
    print(
        f"# wspush's Python per connection opened (no sockets), {args.connections} "
        f"connections per process, medians of {args.reps} processes; {sys.version.split()[0]}"
    )
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="wspush-open-cost.") as tmp:
        redis_server = RedisServer(Path(tmp) / "redis").start()
        try:
            for rep in range(1, args.reps + 1):
                for mode in modes:
                    for label, tree in zip(labels, trees, strict=True):
                        result = run_child(tree, mode, args.connections, redis_server.address)
                        results.setdefault((label, mode), []).append(result)
                        print(f"{label:14} {mode:4} rep{rep}  {result['cpu_us']:6.2f} µs CPU")
        finally:
            redis_server.kill()
    print("# medians")
    for (label, mode), runs in results.items():
        cpu = statistics.median(run["cpu_us"] for run in runs)
        low, high = min(run["cpu_us"] for run in runs), max(run["cpu_us"] for run in runs)
        print(f"{label:14} {mode:4} {cpu:6.2f} µs CPU per connection ({low:.2f} to {high:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
