"""Redis CPU per PUBLISH when N processes hold a pattern subscription on the prefix.

With wspush's default `PSUBSCRIBE <prefix>*`, every wspush process receives every
message, so Redis writes each PUBLISH N times. This starts N draining subscribers (each
stands in for one wspush process), publishes with redis-benchmark, and reads Redis's own
CPU time (INFO cpu) to give microseconds of Redis CPU per PUBLISH for each N.

    taskset -c 1 redis-server --port 6390 --save '' --client-output-buffer-limit 'pubsub 0 0 0' &
    taskset -c 0 python bench/redis_fanout_cost.py --port 6390 -n 1 -n 10 -n 50 -n 100

Needs redis-benchmark on PATH (Debian: redis-tools).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import time

import redis

PSUBSCRIBE = b"*2\r\n$10\r\nPSUBSCRIBE\r\n$9\r\nexample.*\r\n"


async def drain(port: int, stop: asyncio.Event) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(PSUBSCRIBE)
    while not stop.is_set() and await reader.read(1 << 20):
        pass
    writer.close()


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"] + info["used_cpu_sys"])


async def measure(port: int, subscribers: int, publishes: int) -> dict[str, float]:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(drain(port, stop)) for _ in range(subscribers)]
    await asyncio.sleep(1)
    client = redis.Redis(port=port)
    before = redis_cpu(client)
    started = time.monotonic()
    command = ["redis-benchmark", "-p", str(port), "-n", str(publishes), "-P", "32", "-c", "4"]
    await asyncio.to_thread(
        subprocess.run,
        [*command, "-q", "PUBLISH", "example.token", "x" * 64],
        capture_output=True,
        check=True,
    )
    elapsed = time.monotonic() - started
    cpu = redis_cpu(client) - before
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    client.close()
    return {
        "subscribers": subscribers,
        "publish_per_s": round(publishes / elapsed),
        "redis_cpu_us_per_publish": round(cpu / publishes * 1e6, 2),
        "subscriber_writes_per_redis_cpu_s": round(publishes * subscribers / cpu),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("-n", "--subscribers", type=int, action="append")
    parser.add_argument("--publishes", type=int, default=300_000)
    args = parser.parse_args()
    for n in args.subscribers or [1, 10, 50]:
        print(json.dumps(asyncio.run(measure(args.port, n, args.publishes))))


if __name__ == "__main__":
    main()
