"""Redis Cluster: follow the slot map and subscribe on the right nodes.

`--redis` names any node (the seed); the slot map (`CLUSTER SLOTS`) names the others.

- Pattern mode: one `PSUBSCRIBE <prefix>*` on any one node. A cluster forwards every
  classic PUBLISH to every node over its bus, so one node sees everything. When that
  node fails, the next attempt goes to another known node.
- Exact mode: sharded pub/sub (Redis 7+). One connection per shard primary, each
  SSUBSCRIBEd to the channels of the tokens it owns (by `redis.crc.key_slot`), with a
  health probe channel hashed into its own slots. A message then travels only within
  its shard. Publishers must use SPUBLISH.

The map is read again whenever a node's connection fails or a node drops a channel by
itself (the `sunsubscribe` Redis sends when a slot moves), at most once per retry
interval, and every health interval otherwise. A node whose slots changed gets a new
connection, which subscribes the whole current set of its tokens again; the others keep
theirs.

redis-py's asyncio `RedisCluster.pubsub()` (recent releases only) sends one SSUBSCRIBE
per channel and reads nodes by polling them in turn; wspush needs batched commands and a
blocking read per connection, so it drives plain per-node connections itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from wspush.hub import Hub
from wspush.interest import Interest, Link
from wspush.stats import Stats
from wspush.subscriber import CONNECT_TIMEOUT, PATTERN, SHARDED, Subscriber, confirm, connect

logger = logging.getLogger("wspush.redis")

SlotMap = dict[str, frozenset[int]]  # primary "host:port" -> the slots it serves


class ClusterSubscriber:
    """The Redis side of one app on a Redis Cluster, in either subscribe mode."""

    def __init__(
        self,
        url: str,
        prefix: bytes,
        hub: Hub,
        stats: Stats,
        *,
        interest: Interest | None,
        retry_interval: float = 1.0,
        health_interval: float = 15.0,
        tls_verify: bool = True,
        max_message_size: int = 8 * 1024 * 1024,
    ) -> None:
        self.seed = url
        self.prefix = prefix
        self.hub = hub
        self.stats = stats
        self.interest = interest
        self.retry_interval = retry_interval
        self.health_interval = health_interval
        self.tls_verify = tls_verify
        self.max_message_size = max_message_size
        self.known: list[str] = [address_of(url)]  # every node seen, seed first
        self._next_node = itertools.count()
        self.nodes: dict[str, Subscriber] = {}  # exact mode: one per shard primary
        self.slot_map: SlotMap = {}
        self._owner: list[Subscriber | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._refresh = asyncio.Event()
        self._map_failing = False
        self.pattern: Subscriber | None = None
        if interest is None:
            self.pattern = self._subscriber(url, commands=PATTERN, pick_url=self._pick_node)
        else:
            interest.route = self._route

    def _subscriber(self, url: str, **options: Any) -> Subscriber:
        """A connection to one node, with this app's settings; it reports its state
        changes here."""
        return Subscriber(
            url,
            self.prefix,
            self.hub,
            self.stats,
            retry_interval=self.retry_interval,
            health_interval=self.health_interval,
            tls_verify=self.tls_verify,
            max_message_size=self.max_message_size,
            on_change=self._changed,
            **options,
        )

    @property
    def live(self) -> bool:
        """Pattern mode: its one connection is up. Exact: every shard's is."""
        if self.pattern is not None:
            return self.pattern.live
        return bool(self.nodes) and all(node.live for node in self.nodes.values())

    async def run(self) -> None:
        tasks = [asyncio.create_task(self._follow_slot_map(), name="wspush-redis-slots")]
        if self.pattern is not None:
            tasks.append(asyncio.create_task(self.pattern.run(), name="wspush-redis"))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in [*tasks, *self._tasks.values()]:
                task.cancel()
            await asyncio.gather(*tasks, *self._tasks.values(), return_exceptions=True)

    def confirms_subscriptions(self) -> bool:
        """Whether `wait_subscribed` may have to wait (exact mode)."""
        return self.interest is not None

    async def wait_subscribed(self, token: bytes) -> None:
        """Exact mode: wait for the owning shard to confirm the channel (see Subscriber)."""
        if self.interest is None:
            return
        node = self._owner[key_slot(self.prefix + token)]
        if node is not None and node.live:
            await confirm(self.interest, token)

    def _route(self, token: bytes) -> Link | None:
        node = self._owner[key_slot(self.prefix + token)]
        return None if node is None else node.link

    def _pick_node(self) -> str:
        """Pattern mode: the node of the next attempt, going round the known ones."""
        return node_url(self.seed, self.known[next(self._next_node) % len(self.known)])

    def _changed(self) -> None:
        """A connection came up, went down, or lost a channel: update the gauge, and
        read the map again (a failure may be a failover, a lost channel a moved slot)."""
        self.stats.redis_subscribed = int(self.live)
        self._refresh.set()

    async def _follow_slot_map(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                slot_map, nodes = await self._read_slot_map()
            except Exception as exc:
                self._map_failed(exc)
            else:
                self._map_failing = False
                self.known = nodes + [a for a in self.known if a not in nodes]
                if self.interest is not None:
                    self._apply(slot_map)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.health_interval if self.live else 0):
                    await self._refresh.wait()
            self._refresh.clear()
            await asyncio.sleep(max(0.0, self.retry_interval - (loop.time() - started)))

    async def _read_slot_map(self) -> tuple[SlotMap, list[str]]:
        """CLUSTER SLOTS from the first known node that answers."""
        error: Exception = ConnectionError("no node known")
        for address in list(self.known):
            client = connect(
                node_url(self.seed, address), self.tls_verify, socket_timeout=CONNECT_TIMEOUT
            )
            try:
                reply = await client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
            except Exception as exc:  # try the next node
                error = exc
                continue
            finally:
                await client.aclose()
            return parse_cluster_slots(reply, address)
        raise error

    def _map_failed(self, exc: Exception) -> None:
        if not self._map_failing:
            logger.error("redis: cannot read the cluster slot map from any node: %s", exc)
        self._map_failing = True

    def _apply(self, slot_map: SlotMap) -> None:
        """Start a subscriber for each new or changed primary, stop the ones gone."""
        if slot_map == self.slot_map:
            return
        for address in list(self.nodes):
            if slot_map.get(address) != self.slot_map.get(address):
                del self.nodes[address]
                self._tasks.pop(address).cancel()
        for address, slots in slot_map.items():
            if address not in self.nodes:
                self._start(address, slots)
        self.slot_map = slot_map
        owner: list[Subscriber | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        for address, node in self.nodes.items():
            for slot in slot_map[address]:
                owner[slot] = node
        self._owner = owner
        self.stats.redis_subscribed = int(self.live)
        logger.info(
            "redis: cluster of %d shard(s): %s",
            len(slot_map),
            ", ".join(f"{a} ({len(s)} slots)" for a, s in sorted(slot_map.items())),
        )

    def _start(self, address: str, slots: frozenset[int]) -> None:
        probe = probe_tag(self.prefix, slots)
        if probe is None:
            return  # no channel under the prefix hashes here (the prefix has a hash tag)
        prefix = self.prefix

        def owns(token: bytes) -> bool:
            return key_slot(prefix + token) in slots

        node = self._subscriber(
            node_url(self.seed, address),
            commands=SHARDED,
            interest=self.interest,
            owns=owns,
            probe_token=probe,
        )
        self.nodes[address] = node
        self._tasks[address] = asyncio.create_task(node.run(), name=f"wspush-redis-{address}")


def parse_cluster_slots(reply: list[list[object]], queried: str) -> tuple[SlotMap, list[str]]:
    """The primaries' slots and every node's address, from a CLUSTER SLOTS reply.

    Each entry is [first slot, last slot, primary, replica...], a node being [host,
    port, id, ...]; an empty host means the node we asked.
    """
    slots: dict[str, set[int]] = {}
    nodes: list[str] = []
    for first, last, *members in reply:
        for index, member in enumerate(members):
            host, port = member[0], member[1]  # type: ignore[index]
            host = host.decode() if isinstance(host, bytes) else str(host)
            address = format_address(host or queried.rpartition(":")[0], int(port))
            if address not in nodes:
                nodes.append(address)
            if index == 0:
                slots.setdefault(address, set()).update(range(int(first), int(last) + 1))  # type: ignore[call-overload]
    return {address: frozenset(s) for address, s in slots.items()}, nodes


def probe_tag(prefix: bytes, slots: frozenset[int]) -> bytes | None:
    """A hash tag that puts the probe channel `<prefix>wspush-probe-{N}...` into `slots`."""
    for number in range(REDIS_CLUSTER_HASH_SLOTS * 8):
        tag = b"{%d}" % number
        if key_slot(prefix + b"wspush-probe-" + tag) in slots:
            return tag
    return None


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def address_of(url: str) -> str:
    parts = urlsplit(url)
    return format_address(parts.hostname or "localhost", parts.port or 6379)


def node_url(seed: str, address: str) -> str:
    """The seed URL (scheme, credentials, options) pointed at another node."""
    parts = urlsplit(seed)
    credentials, _, _ = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{credentials}@{address}" if credentials else address))
