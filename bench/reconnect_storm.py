"""A reconnect storm: every client comes back at once, each a few messages behind.

After a deploy or a network blip all clients reconnect together. With `--history-size`
each one resumes: wspush reads what it missed from Redis, replays it, and goes live. This
measures, for each server command and with history on and off, side by side:

- how long until every client is live: its replay received (history on) and a message
  published after the storm received too;
- the relay's and Redis's CPU seconds for the storm, and per resume.

    python bench/reconnect_storm.py --cmd "$PWD/.venv/bin/python -m wspush" -n 10000

Each run starts its own redis-server, and the server pinned to CPU 0 (the clients and
Redis share CPU 1). Before the storm it publishes `--messages` messages per token with
history; each client then reconnects with the id `--behind` messages before the last
(history on) or with none (history off: a plain reconnect, nothing replayed). The
clients are one C program (bench/storm_client.c, compiled with gcc on first use).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis

from tests.conftest import RedisServer, free_port, wait_until
from wspush import history

PREFIX = b"bench."
CACHE = Path(os.environ.get("WSPUSH_BENCH_DIR", Path.home() / ".cache" / "wspush-bench"))
INFLIGHT = 256  # handshakes in flight, as the shared harness's loadgen
START_TIMEOUT = 30.0
STORM_TIMEOUT = 60.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its reaped children, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(value) for value in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def storm_client() -> Path:
    """bench/storm_client.c, compiled on first use (and again when the source changes)."""
    source = Path(__file__).with_name("storm_client.c")
    binary = CACHE / "storm_client"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(["gcc", "-O2", "-o", str(binary), str(source)], check=True)
    return binary


def publish_history(
    client: redis.Redis, tokens: list[bytes], count: int, size: int, behind: int
) -> list[bytes]:
    """`count` messages with history per token; for each token the id of the message
    `behind` messages before its last (where its client resumes from)."""
    last: list[bytes] = []
    for start in range(0, len(tokens), 500):
        pipe = client.pipeline(transaction=False)
        for token in tokens[start : start + 500]:
            for n in range(count):
                keys, args = history.publish_arguments(
                    PREFIX + token, b"m%d" % n, size, 3600, False
                )
                pipe.fcall(history.FUNCTION_NAME, 1, *keys, *args)
        replies = pipe.execute()
        last.extend(replies[count - 1 - behind :: count])
    return last


def storm(cmd: list[str], on: bool, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    redis_server = RedisServer(workdir / f"redis-{time.monotonic_ns()}").start()
    port = free_port()
    flags = ["-addr", f"127.0.0.1:{port}", "-redis", redis_server.address, "-prefix", "bench."]
    if on:
        flags += ["--history-size", str(args.history_size)]
    server = subprocess.Popen(
        ["taskset", "-c", "0", *cmd, *flags],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis_server.client()
        wait_until(lambda: ping(port), START_TIMEOUT, "the server to answer /ping")
        client.function_load(history.FUNCTION_LIBRARY, replace=True)
        tokens = [b"u%d" % n for n in range(args.connections)]
        positions = publish_history(client, tokens, args.messages, args.history_size, args.behind)
        requests = [
            b"GET /sse?token=%s HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n%s\r\n"
            % (token, b"Last-Event-ID: %s\r\n" % position if on else b"")
            for token, position in zip(tokens, positions, strict=True)
        ]
        expected = args.behind if on else 0
        requests_file = workdir / "requests"
        requests_file.write_bytes(b"".join(requests))
        redis_pid = redis_server.process.pid  # type: ignore[union-attr]
        cpu_before = cpu_seconds(server.pid), cpu_seconds(redis_pid)
        client_argv = [str(storm_client()), str(port), str(requests_file), str(expected)]
        clients = subprocess.Popen(
            ["taskset", "-c", "1", *client_argv, str(INFLIGHT), str(STORM_TIMEOUT)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert clients.stdout is not None
        replayed = clients.stdout.readline().split()
        cpu_after = cpu_seconds(server.pid), cpu_seconds(redis_pid)
        if not replayed:
            raise RuntimeError(f"the storm did not complete (exit {clients.wait(10)})")
        live_sent = time.time()
        pipe = client.pipeline(transaction=False)
        for token in tokens:
            pipe.publish(PREFIX + token, b"live")
        pipe.execute()
        live = clients.stdout.readline().split()
        clients.wait(timeout=10)
        relay_cpu = cpu_after[0] - cpu_before[0]
        redis_cpu = cpu_after[1] - cpu_before[1]
        return {
            "history": "on" if on else "off",
            "connections": args.connections,
            "behind": expected,
            "all_replayed_s": round(float(replayed[1]), 3),
            "live_after_publish_s": round(float(live[1]) - live_sent, 3),
            "events": int(live[2]),
            "relay_cpu_s": round(relay_cpu, 3),
            "redis_cpu_s": round(redis_cpu, 3),
            "relay_cpu_us_per_resume": round(relay_cpu / args.connections * 1e6, 1),
            "redis_cpu_us_per_resume": round(redis_cpu / args.connections * 1e6, 1),
        }
    finally:
        server.terminate()
        server.wait(timeout=30)
        redis_server.kill()


def ping(port: int) -> bool:
    try:
        import httpx

        return httpx.get(f"http://127.0.0.1:{port}/ping", timeout=1).status_code == 200
    except Exception:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cmd", required=True, help="server command (Go-style flags)")
    parser.add_argument("-n", "--connections", type=int, default=10000)
    parser.add_argument("--messages", type=int, default=10, help="published per token first")
    parser.add_argument("--behind", type=int, default=3, help="messages each client missed")
    parser.add_argument("--history-size", type=int, default=100)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--modes", default="on,off", help="history on, off, or both")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
    print(
        f"# reconnect storm: {args.connections} SSE clients at once, {args.behind} behind, "
        f"history size {args.history_size}; server on CPU 0; {args.reps} reps, alternating",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="wspush-storm.") as tmp:
        for rep in range(args.reps):
            modes = [mode == "on" for mode in args.modes.split(",")]
            for on in modes if rep % 2 == 0 else modes[::-1]:
                row = storm(args.cmd.split(), on, args, Path(tmp))
                rows.append(row)
                print(json.dumps(row) if args.json else row, flush=True)
    for mode in args.modes.split(","):
        mine = [row for row in rows if row["history"] == mode]

        def median(name: str, rows: list[dict[str, Any]] = mine) -> float:
            return round(statistics.median(row[name] for row in rows), 3)

        print(
            f"history {mode}: all live in {median('all_replayed_s')} s (median of {len(mine)}),"
            f" CPU per connection: relay {median('relay_cpu_us_per_resume')} us,"
            f" redis {median('redis_cpu_us_per_resume')} us"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
