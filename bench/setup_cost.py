"""CPU instructions a server spends to open one connection, counted by callgrind.

Connection set-up is CPU-bound, and on a shared machine its wall-clock rate moves by
±20% from one run to the next. Instruction counts do not: valgrind's callgrind counts
what the server's process executes (user space; the kernel's share of accept, read and
write is not in it), and two runs of the same code agree within about 0.5%. That makes
small set-up changes measurable side by side.

For each server command and each transport it:
1. starts a redis-server and the server under `valgrind --tool=callgrind`, with counting
   off until the server answers;
2. turns counting on, opens N connections (one per token) with the shared harness's C
   loadgen at a pace valgrind keeps up with, waits for all of them, and turns it off;
3. prints instructions per connection (the server's idle timers in that window are
   included; they are a few hundred instructions per connection at most);
4. with `--unicast M`, then counts again while M messages are published, one per token
   in turn (so every message is one delivery, as in the harness's unicast workloads), in
   pipelined bursts of `BURST` so that the relay reads many per socket read, as it does
   at 20,000 msg/s; and prints instructions per message.

    python bench/setup_cost.py --label wspush --cmd "$PWD/.venv/bin/python -m wspush" \
        --label other --cmd "/path/to/other/venv/bin/python -m wspush"

The loadgen comes from the shared harness's work dir (``$WSPUSH_BENCH_DIR`` or
``~/.cache/wspush-bench``; build it with ``python3 ../shared/bench/run.py build``).
A server command must take Go-style ``-addr``, ``-redis`` and ``-prefix`` flags.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.flood import LOADGEN
from tests.conftest import RedisServer, free_port, wait_until

BURST = 100  # messages per pipelined burst in --unicast (the harness: ~150 per read at 20k/s)
BURSTS_PER_SECOND = 10  # what a server under callgrind delivers without falling behind
CONNECT_RATE = 400  # connections/s: what a server under callgrind answers without timeouts
INFLIGHT = 16
START_TIMEOUT = 120.0
READY_TIMEOUT = 600.0


def answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def callgrind_control(pid: int, *options: str) -> None:
    subprocess.run(["callgrind_control", *options, str(pid)], check=True, capture_output=True)


def dump_files(out_prefix: Path) -> set[Path]:
    return set(out_prefix.parent.glob(out_prefix.name + "*"))


def total_instructions(paths: set[Path]) -> int:
    """The largest `summary:`/`totals:` over these dump files (the dump taken on demand)."""
    total = 0
    for path in paths:
        for line in path.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                total = max(total, int(line.split()[1]))
    return total


def publish_unicast(redis_port: int, messages: int, connections: int) -> None:
    """`messages` messages, one per token in turn (the loadgen's token i is `t<i>`), in
    pipelined bursts: the way the harness's publisher reaches a relay at a high rate."""
    client = redis.Redis(port=redis_port)
    try:
        for start in range(0, messages, BURST):
            pipe = client.pipeline(transaction=False)
            for index in range(start, min(start + BURST, messages)):
                pipe.publish(f"b.t{index % connections}", b"x" * 64)
            pipe.execute()
            time.sleep(1 / BURSTS_PER_SECOND)
    finally:
        client.close()


def measure(
    cmd: list[str],
    mode: str,
    connections: int,
    redis_port: int,
    workdir: Path,
    unicast: int = 0,
) -> dict[str, Any]:
    """Instructions per connection (and per unicast message) for one server command and
    transport."""
    port = free_port()
    out = workdir / f"callgrind.{mode}.{port}.out"
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    flags = ["-addr", f"127.0.0.1:{port}", "-redis", f"127.0.0.1:{redis_port}", "-prefix", "b."]
    server = subprocess.Popen(
        [*valgrind, *cmd, *flags],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: answers(port), START_TIMEOUT, f"the server on port {port}")
        time.sleep(2)  # let the subscriber settle
        ready = workdir / f"ready.{port}.json"
        callgrind_control(server.pid, "-i", "on")
        loadgen_args = [
            *("-p", str(port), "-m", mode, "-n", str(connections), "-t", str(connections)),
            *("-r", str(CONNECT_RATE), "--inflight", str(INFLIGHT), "--ready-file", str(ready)),
            *("--drain-idle-ms", "200", "--drain-max", "2", "--max-time", str(int(READY_TIMEOUT))),
        ]
        loadgen = subprocess.Popen(
            [str(LOADGEN), *loadgen_args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        wait_until(ready.exists, READY_TIMEOUT, "every connection to open")
        time.sleep(1)  # the last handshakes' own work (the endpoint's first steps)
        callgrind_control(server.pid, "-i", "off")
        callgrind_control(server.pid, "-d")
        setup_dumps = dump_files(out)
        established = json.loads(ready.read_text())["established"]
        if unicast:
            callgrind_control(server.pid, "-z")
            callgrind_control(server.pid, "-i", "on")
            publish_unicast(redis_port, unicast, connections)
            time.sleep(2)  # the last burst's deliveries
            callgrind_control(server.pid, "-i", "off")
            callgrind_control(server.pid, "-d")
        loadgen.send_signal(10)  # SIGUSR1: drain and report
        report = json.loads(loadgen.communicate(timeout=30)[0] or b"{}")
    finally:
        server.terminate()
        server.wait(timeout=60)
    row: dict[str, Any] = {
        "mode": mode,
        "connections": connections,
        "established": established,
        "instructions_per_connection": round(total_instructions(setup_dumps) / connections),
    }
    if unicast:
        row["messages"] = unicast
        row["received"] = report.get("msgs")
        publish_dumps = dump_files(out) - setup_dumps
        row["instructions_per_message"] = round(total_instructions(publish_dumps) / unicast)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cmd", action="append", required=True, help="server command")
    parser.add_argument("--label", action="append", help="a name per --cmd, in order")
    parser.add_argument("--modes", default="ws,sse", help="transports: ws, sse (default both)")
    parser.add_argument("-n", "--connections", type=int, default=1000)
    parser.add_argument(
        "--unicast",
        type=int,
        default=0,
        metavar="M",
        help="also count instructions per message while M messages go one per token",
    )
    parser.add_argument("--keep", type=Path, help="write callgrind's files here (to annotate)")
    parser.add_argument("--json", action="store_true", help="one JSON line per result")
    args = parser.parse_args()
    labels = args.label or [f"cmd{i + 1}" for i in range(len(args.cmd))]
    if len(labels) != len(args.cmd):
        parser.error("give one --label per --cmd, or none")
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not on PATH (Debian: apt-get install valgrind)")
    if not LOADGEN.exists():
        parser.error(f"no loadgen at {LOADGEN}: run python3 ../shared/bench/run.py build")
    print(
        f"# callgrind instructions per connection (user space), {args.connections} connections "
        f"per run, one per token, {CONNECT_RATE}/s, {INFLIGHT} in flight",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="wspush-setup-cost.") as scratch:
        tmp = str(args.keep or scratch)
        Path(tmp).mkdir(parents=True, exist_ok=True)
        redis = RedisServer(Path(tmp) / "redis").start()
        try:
            for mode in args.modes.split(","):
                for label, cmd in zip(labels, args.cmd, strict=True):
                    row = measure(
                        cmd.split(), mode, args.connections, redis.port, Path(tmp), args.unicast
                    )
                    row["label"] = label
                    if args.json:
                        print(json.dumps(row), flush=True)
                    else:
                        per_connection = row["instructions_per_connection"] / 1000
                        line = (
                            f"{label:<16} {mode:<4} established {row['established']:>6}  "
                            f"{per_connection:8.1f}k instructions/connection"
                        )
                        if args.unicast:
                            line += (
                                f"  {row['instructions_per_message'] / 1000:6.1f}k"
                                f" instructions/message ({row['received']} of"
                                f" {row['messages']} received)"
                            )
                        print(line, flush=True)
        finally:
            redis.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
