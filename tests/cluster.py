"""A real local Redis Cluster for the tests: 3 primaries and 3 replicas, made from the
redis-server binary on free ports and joined by hand (CLUSTER ADDSLOTSRANGE, MEET,
REPLICATE), with a short node timeout so a failover takes a few seconds."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path

import redis
from redis.crc import key_slot

from tests.conftest import RedisServer, free_ports, wait_until

NODE_TIMEOUT_MS = 1000
RANGES = [(0, 5460), (5461, 10922), (10923, 16383)]


class LocalCluster:
    def __init__(self, workdir: Path) -> None:
        self.nodes: list[RedisServer] = []
        ports = free_ports(12)  # distinct: a node's port and bus port, for six nodes
        for index in range(6):
            port, bus = ports[2 * index], ports[2 * index + 1]
            self.nodes.append(
                RedisServer(
                    workdir / f"node{index}",
                    port,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    str(NODE_TIMEOUT_MS),
                    "--cluster-port",
                    str(bus),
                )
            )

    @property
    def seed(self) -> str:
        return self.nodes[0].address

    def start(self) -> LocalCluster:
        for node in self.nodes:
            node.start()
        primaries, replicas = self.nodes[:3], self.nodes[3:]
        for node, (first, last) in zip(primaries, RANGES, strict=True):
            with node.client() as client:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        with self.nodes[0].client() as client:
            for node in self.nodes[1:]:
                bus = node.extra[node.extra.index("--cluster-port") + 1]
                client.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, bus)
        wait_until(lambda: all(self._known(n) == 6 for n in self.nodes), 15, "the nodes to meet")
        for primary, replica in zip(primaries, replicas, strict=True):
            with primary.client() as client:
                primary_id = client.execute_command("CLUSTER", "MYID").decode()
            with replica.client() as client:
                client.execute_command("CLUSTER", "REPLICATE", primary_id)
        wait_until(self.healthy, 20, "the cluster to be ok with its replicas in sync")
        return self

    def healthy(self) -> bool:
        for node in self.alive():
            with node.client() as client:
                if client.cluster("INFO")["cluster_state"] != "ok":
                    return False
                info = client.info("replication")
                if info["role"] == "slave" and info.get("master_link_status") != "up":
                    return False
        return True

    @staticmethod
    def _known(node: RedisServer) -> int:
        with node.client() as client:
            return len(client.execute_command("CLUSTER", "NODES").decode().strip().splitlines())

    def alive(self) -> Iterator[RedisServer]:
        return (n for n in self.nodes if n.process is not None and n.process.poll() is None)

    def primary_for(self, channel: str) -> RedisServer:
        """The node that serves `channel`'s slot now."""
        slot = key_slot(channel.encode())
        for node in self.alive():
            with node.client() as client, contextlib.suppress(redis.RedisError):
                for first, last, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                    if first <= slot <= last:
                        return next(n for n in self.nodes if n.port == int(primary[1]))
        raise AssertionError(f"no node serves slot {slot}")

    def client(self) -> redis.RedisCluster:
        node = next(self.alive())
        return redis.RedisCluster(host="127.0.0.1", port=node.port, socket_timeout=5)

    def kill(self, node: RedisServer) -> None:
        assert node.process is not None
        node.process.send_signal(signal.SIGKILL)
        node.process.wait(timeout=10)

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


def tokens_per_shard(prefix: str = "example.") -> list[str]:
    """One token whose channel lives in each of the three slot ranges."""
    found: dict[int, str] = {}
    number = 0
    while len(found) < 3:
        token = f"s{number}"
        slot = key_slot(f"{prefix}{token}".encode())
        shard = next(i for i, (first, last) in enumerate(RANGES) if first <= slot <= last)
        found.setdefault(shard, token)
        number += 1
    return [found[i] for i in range(3)]
