#!/usr/bin/env python3
"""What each wspush instance reads from Redis, in pattern and in exact subscribe mode.

Starts a redis-server of its own (or, with --cluster, a local 3+3 Redis Cluster), then
for each mode: N wspush instances, each with its own disjoint set of tokens and one
WebSocket client per token; publishes M messages to every token of every instance; and
reports per instance the messages it read from Redis (`messages_seen` at /debug/vars)
and the CPU time it spent, and, on a cluster, the pub/sub messages the nodes sent each
other over the cluster bus.

    .venv/bin/python bench/interest.py --instances 3 --tokens 200 --messages 20
    .venv/bin/python bench/interest.py --cluster

Run from the repository root, in the project venv (it reuses the test suite's
process helpers from tests/).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

import httpx
import redis
from websockets.asyncio.client import ClientConnection, connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.cluster import LocalCluster
from tests.conftest import RedisServer, Wspush, free_port

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def bus_messages(cluster: LocalCluster) -> dict[str, int]:
    """Pub/sub messages sent over the cluster bus, summed over every node."""
    total = {"publish": 0, "publishshard": 0}
    for node in cluster.alive():
        with node.client() as client:
            info = client.cluster("INFO")
        for kind in total:
            total[kind] += int(info.get(f"cluster_stats_messages_{kind}_sent", 0))
    return total


async def run_mode(args: argparse.Namespace, mode: str, workdir: Path) -> dict[str, object]:
    cluster = LocalCluster(workdir / "cluster").start() if args.cluster else None
    server = None if cluster else RedisServer(workdir / "redis").start()
    address = cluster.seed if cluster else server.address  # type: ignore[union-attr]
    expvar_ports = [free_port() for _ in range(args.instances)]
    extra = ["--redis-cluster"] if cluster else []
    instances = [
        Wspush(
            workdir / f"wspush{i}",
            "-redis",
            address,
            "--subscribe-mode",
            mode,
            "-expvar",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            *extra,
        ).start()
        for i, port in enumerate(expvar_ports)
    ]
    tokens = [[f"i{i}-t{j}" for j in range(args.tokens)] for i in range(args.instances)]
    sockets: list[contextlib.AbstractAsyncContextManager[ClientConnection]] = []
    try:
        opened: list[ClientConnection] = []
        for instance, own in zip(instances, tokens, strict=True):
            for token in own:
                socket = connect(instance.ws_url(token), open_timeout=10)
                opened.append(await socket.__aenter__())
                sockets.append(socket)
        before_cpu = [cpu_seconds(i.process.pid) for i in instances]  # type: ignore[union-attr]
        before_bus = bus_messages(cluster) if cluster else {}
        # On a cluster: SPUBLISH through a cluster client (to each channel's shard) in
        # exact mode, PUBLISH to one node in pattern mode (the bus takes it everywhere).
        sharded = cluster is not None and mode == "exact"
        publisher: redis.Redis | redis.RedisCluster
        if sharded:
            publisher = cluster.client()  # type: ignore[union-attr]
        else:
            publisher = (cluster.nodes[0] if cluster else server).client()  # type: ignore[union-attr]
        with publisher:
            for n in range(args.messages):
                pipe = publisher.pipeline(transaction=False)
                for own in tokens:
                    for token in own:
                        channel = f"example.{token}"
                        if sharded:
                            pipe.execute_command("SPUBLISH", channel, str(n))
                        else:
                            pipe.publish(channel, str(n))
                pipe.execute()
        async with asyncio.timeout(60):
            for ws in opened:
                for _ in range(args.messages):
                    await ws.recv()
        await asyncio.sleep(0.5)  # let the instances finish reading what nobody wants
        cpu = [
            round(cpu_seconds(i.process.pid) - b, 2)  # type: ignore[union-attr]
            for i, b in zip(instances, before_cpu, strict=True)
        ]
        async with httpx.AsyncClient(timeout=5) as http:
            seen = [
                (await http.get(f"http://127.0.0.1:{p}/debug/vars")).json()["wspush"][
                    "messages_seen"
                ]
                for p in expvar_ports
            ]
        result: dict[str, object] = {
            "mode": mode,
            "cluster": bool(cluster),
            "instances": args.instances,
            "tokens_per_instance": args.tokens,
            "messages_per_token": args.messages,
            "published": args.instances * args.tokens * args.messages,
            "messages_seen": seen,
            "cpu_seconds": cpu,
        }
        if cluster:
            after = bus_messages(cluster)
            result["cluster_bus_pubsub_messages"] = {k: after[k] - before_bus[k] for k in after}
        return result
    finally:
        for socket in sockets:
            with contextlib.suppress(Exception):
                await socket.__aexit__(None, None, None)
        for instance in instances:
            instance.stop()
        if cluster:
            cluster.stop()
        if server:
            server.kill()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=200, help="tokens (clients) per instance")
    parser.add_argument("--messages", type=int, default=20, help="messages per token")
    parser.add_argument("--cluster", action="store_true", help="on a local 3+3 Redis Cluster")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("pattern", "exact"):
            print(json.dumps(await run_mode(args, mode, Path(tmp) / mode)), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
