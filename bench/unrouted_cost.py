"""CPU a wspush process spends on messages that none of its clients wants.

With the default pattern subscription every process receives every message published
under the prefix, whichever process holds the token's clients. This publishes at a fixed
rate to tokens nobody is connected to and reads the server's CPU time from /proc, so the
cost per unrouted message can be put into a capacity plan (docs/scaling.md).

    taskset -c 0 python -m wspush -addr 127.0.0.1:8080 -redis 127.0.0.1:6390 &
    taskset -c 1 python bench/unrouted_cost.py --server-pid $! --redis redis://127.0.0.1:6390 \
        --rate 5000 --duration 10

Prints one JSON line per rate: published/s, server CPU seconds, CPU utilisation, and
microseconds of server CPU per message.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import redis


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(client: redis.Redis, pid: int, prefix: str, rate: int, duration: float) -> dict[str, float]:
    tick = 0.01
    per_tick = rate * tick
    payload = b"x" * 64
    published = 0
    cpu_before = cpu_seconds(pid)
    started = time.monotonic()
    deadline = started + duration
    owed = 0.0
    while (now := time.monotonic()) < deadline:
        owed += per_tick
        count = int(owed)
        owed -= count
        if count:
            pipe = client.pipeline(transaction=False)
            for n in range(count):
                pipe.publish(f"{prefix}nobody-{(published + n) % 1000}", payload)
            pipe.execute()
            published += count
        time.sleep(max(0.0, tick - (time.monotonic() - now)))
    elapsed = time.monotonic() - started
    time.sleep(0.5)  # let the server finish reading what is in flight
    cpu = cpu_seconds(pid) - cpu_before
    return {
        "rate": rate,
        "published_per_s": round(published / elapsed),
        "server_cpu_s": round(cpu, 3),
        "server_util": round(cpu / (elapsed + 0.5), 3),
        "cpu_us_per_message": round(cpu / published * 1e6, 2) if published else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server-pid", type=int, required=True)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379")
    parser.add_argument("--prefix", default="example.")
    parser.add_argument("--rate", type=int, action="append", help="msg/s; repeat for a sweep")
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    with redis.Redis.from_url(args.redis) as client:
        for rate in args.rate or [5000]:
            print(json.dumps(run(client, args.server_pid, args.prefix, rate, args.duration)))


if __name__ == "__main__":
    main()
