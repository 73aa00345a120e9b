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
   included; they are a few hundred instructions per connection at most).

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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.flood import LOADGEN
from tests.conftest import RedisServer, free_port, wait_until

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


def total_instructions(out_prefix: Path) -> int:
    """The largest `summary:`/`totals:` over the dump files (the dump taken on demand)."""
    total = 0
    for path in out_prefix.parent.glob(out_prefix.name + "*"):
        for line in path.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                total = max(total, int(line.split()[1]))
    return total


def measure(
    cmd: list[str], mode: str, connections: int, redis_port: int, workdir: Path
) -> dict[str, Any]:
    """Instructions per connection for one server command and transport."""
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
        established = json.loads(ready.read_text())["established"]
        loadgen.send_signal(10)  # SIGUSR1: drain and report
        loadgen.communicate(timeout=30)
    finally:
        server.terminate()
        server.wait(timeout=60)
    instructions = total_instructions(out)
    return {
        "mode": mode,
        "connections": connections,
        "established": established,
        "instructions_per_connection": round(instructions / connections),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cmd", action="append", required=True, help="server command")
    parser.add_argument("--label", action="append", help="a name per --cmd, in order")
    parser.add_argument("--modes", default="ws,sse", help="transports: ws, sse (default both)")
    parser.add_argument("-n", "--connections", type=int, default=1000)
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
    with tempfile.TemporaryDirectory(prefix="wspush-setup-cost.") as tmp:
        redis = RedisServer(Path(tmp) / "redis").start()
        try:
            for mode in args.modes.split(","):
                for label, cmd in zip(labels, args.cmd, strict=True):
                    row = measure(cmd.split(), mode, args.connections, redis.port, Path(tmp))
                    row["label"] = label
                    if args.json:
                        print(json.dumps(row), flush=True)
                    else:
                        per_connection = row["instructions_per_connection"] / 1000
                        print(
                            f"{label:<16} {mode:<4} established {row['established']:>6}  "
                            f"{per_connection:8.1f}k instructions/connection",
                            flush=True,
                        )
        finally:
            redis.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
