"""Where a server's CPU goes while 10,000 connections open unpaced: user and kernel time
per connection, side by side, in one run.

The shared harness's `setup-10k` gives the rate; it measures the server's CPU only in
the publishing window after it. This opens the same connections (the harness's loadgen,
half WebSocket and half SSE by default, 256 in flight, unpaced), with the server pinned
to CPU 0 and the loadgen to CPU 1 as the harness places them, and reads the server's
user and system time from `/proc` just before the first connection and just after the
last one is set up. The kernel share (the system calls, and the loopback delivery to
the client that runs inside the server's `write`) is the server's too; comparing it with
`bench/protocol_floor.py`'s, and with the floor slowed down by `--delay-us`, tells what
of it is the server's own work and what comes of being slower (a client that has
gone to sleep between two answers has to be woken).

    python bench/setup_split.py --label wspush --cmd "$PWD/.venv/bin/python -m wspush" \\
        --label floor --cmd "$PWD/.venv/bin/python bench/protocol_floor.py" --reps 3

Commands are run from the current directory, so run it from outside the checkout (as
`cd /tmp`) for a server installed elsewhere. A command must take Go-style `-addr` and
`-redis` flags. Rounds alternate the commands; medians are printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.flood import LOADGEN
from bench.setup_cost import answers
from tests.conftest import RedisServer, free_port, wait_until

CONNECTIONS = 10_000
INFLIGHT = 256  # as the harness's setup-10k
CONNECT_RATE = 200_000  # unpaced, as setup-10k
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """A process's user and system CPU time so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def one_run(cmd: list[str], mode: str, redis_port: int, workdir: Path) -> dict[str, float]:
    """Open the connections once against a fresh server; the rate and CPU per connection."""
    port = free_port()
    flags = ["-addr", f"127.0.0.1:{port}", "-redis", f"127.0.0.1:{redis_port}"]
    server = subprocess.Popen(
        ["taskset", "-c", "0", *cmd, *flags],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: answers(port), 30, f"the server on port {port}")
        time.sleep(0.5)
        ready = workdir / f"ready.{port}"
        before = cpu_seconds(server.pid)
        loadgen = subprocess.Popen(
            [
                *("taskset", "-c", "1", str(LOADGEN), "-p", str(port), "-m", mode),
                *("-n", str(CONNECTIONS), "-t", str(CONNECTIONS), "-r", str(CONNECT_RATE)),
                *("--inflight", str(INFLIGHT), "--ready-file", str(ready), "--hold", "0.5"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        while not ready.exists():  # polled closely: the window ends when it appears
            if loadgen.poll() is not None:
                raise RuntimeError("the loadgen exited before every connection opened")
            time.sleep(0.002)
        after = cpu_seconds(server.pid)
        report = json.loads(loadgen.communicate(timeout=60)[0])
    finally:
        server.terminate()
        server.wait(timeout=30)
    if report["established"] != CONNECTIONS:
        raise RuntimeError(f"only {report['established']} of {CONNECTIONS} connections opened")
    return {
        "rate": report["setup_rate"],
        "user_us": (after[0] - before[0]) / CONNECTIONS * 1e6,
        "system_us": (after[1] - before[1]) / CONNECTIONS * 1e6,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cmd", action="append", required=True, help="server command")
    parser.add_argument("--label", action="append", help="a name per --cmd, in order")
    parser.add_argument("--mode", default="mix", help="loadgen mode: mix, ws or sse")
    parser.add_argument("--reps", type=int, default=3, help="rounds (default 3)")
    args = parser.parse_args()
    labels = args.label or [f"cmd{i + 1}" for i in range(len(args.cmd))]
    if len(labels) != len(args.cmd):
        parser.error("give one --label per --cmd, or none")
    if not LOADGEN.exists():
        parser.error(f"no loadgen at {LOADGEN}: run python3 ../shared/bench/run.py build")
    print(
        f"# {CONNECTIONS} connections ({args.mode}), unpaced, {INFLIGHT} in flight; server "
        "on CPU 0, loadgen on CPU 1; CPU per connection from /proc, user / system",
        flush=True,
    )
    runs: dict[str, list[dict[str, float]]] = {label: [] for label in labels}
    with tempfile.TemporaryDirectory(prefix="wspush-setup-split.") as tmp:
        redis_server = RedisServer(Path(tmp) / "redis").start()
        try:
            for rep in range(args.reps):
                for label, cmd in zip(labels, args.cmd, strict=True):
                    row = one_run(cmd.split(), args.mode, redis_server.port, Path(tmp))
                    runs[label].append(row)
                    print(
                        f"{label:14s} rep{rep + 1} {row['rate']:9,.0f} conn/s  user "
                        f"{row['user_us']:5.1f} µs  system {row['system_us']:5.1f} µs",
                        flush=True,
                    )
        finally:
            redis_server.kill()
    print("# medians")
    for label, rows in runs.items():
        rate = statistics.median(row["rate"] for row in rows)
        user = statistics.median(row["user_us"] for row in rows)
        system = statistics.median(row["system_us"] for row in rows)
        print(f"{label:14s} {rate:9,.0f} conn/s  user {user:5.1f} µs  system {system:5.1f} µs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
