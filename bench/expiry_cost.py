"""What tokens that expire cost: the expiry timer per connection, and checking a JWT.

Runs in one process, on the hub itself (no sockets), so it measures only what expiry
adds: N connections subscribed and unsubscribed with an expiry and without, their
memory (tracemalloc) with and without, the timer closing all N at once, and the CPU of
checking one token on connect (plain, HMAC, and a JWT of each algorithm).

    python bench/expiry_cost.py --connections 10000 --repeats 7

Prints one JSON line per figure: the median over the repeats, and the raw runs.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import jwt
import uvloop
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from wspush.access import Access
from wspush.hub import Hub, Subscription, Transport
from wspush.settings import Settings
from wspush.stats import Stats
from wspush.tokens import sign

SECRET = "bench-secret-of-at-least-thirty-two-bytes"


def report(name: str, unit: str, runs: list[float], **extra: Any) -> None:
    print(
        json.dumps(
            {"figure": name, "unit": unit, "median": round(statistics.median(runs), 3),
             "runs": [round(r, 3) for r in runs], **extra}
        )
    )  # fmt: skip


def subscribe_all(hub: Hub, count: int, expires: float | None) -> list[Subscription]:
    return [hub.subscribe(b"t%d" % n, Transport.WEBSOCKET, "", expires) for n in range(count)]


def subscribe_cost(count: int, with_expiry: bool) -> float:
    """Microseconds per connection to subscribe and unsubscribe (in order of arrival)."""
    hub = Hub(15, 100, Stats())
    expires = time.time() + 3600 if with_expiry else None
    gc.collect()
    started = time.perf_counter()
    subscriptions = subscribe_all(hub, count, expires)
    for subscription in subscriptions:
        hub.unsubscribe(subscription)
    elapsed = time.perf_counter() - started
    hub.expiries.close()
    return elapsed / count * 1e6


def memory_cost(count: int, with_expiry: bool) -> float:
    """Bytes per connection held by the hub for `count` subscribed connections."""
    hub = Hub(15, 100, Stats())
    expires = time.time() + 3600 if with_expiry else None
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    subscriptions = subscribe_all(hub, count, expires)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    hub.expiries.close()
    del subscriptions
    return (after - before) / count


async def expire_all_cost(count: int) -> float:
    """Microseconds per connection for the timer to close `count` connections whose
    tokens expire in the same instant (a burst: every page got its token at once)."""
    hub = Hub(15, 100, Stats())
    expires = time.time() + 0.2
    subscribe_all(hub, count, expires)
    gc.collect()
    closed = asyncio.Event()
    original = hub.expiries.expire
    timings: list[float] = []

    def timed(subscription: Subscription) -> None:
        if not timings:
            timings.append(time.perf_counter())
        original(subscription)
        if hub.stats.expired_clients_disconnected == count:
            timings.append(time.perf_counter())
            closed.set()

    hub.expiries.expire = timed
    await asyncio.wait_for(closed.wait(), 10)
    return (timings[1] - timings[0]) / count * 1e6


def check_cost(check: Callable[[], object], count: int) -> float:
    """Microseconds per token check on connect."""
    started = time.perf_counter()
    for _ in range(count):
        check()
    return (time.perf_counter() - started) / count * 1e6


def token_checks(tmp: str) -> dict[str, Callable[[], object]]:
    """One admission call per kind of token, as the endpoints make it."""
    claims = {"sub": "alice", "exp": int(time.time()) + 3600, "iat": int(time.time())}
    checks: dict[str, Callable[[], object]] = {}
    plain = Access(Settings())
    checks["plain"] = lambda: plain.grant(b"token=alice")
    hmac_access = Access(Settings(hmac="YmVuY2gta2V5"))
    signed = sign(b"bench-key", b"alice").encode()
    checks["hmac-md5"] = lambda: hmac_access.grant(b"token=" + signed)
    hs = Access(Settings(jwt_secret=SECRET))
    hs_token = jwt.encode(claims, SECRET, algorithm="HS256").encode()
    checks["jwt-HS256"] = lambda: hs.grant(b"token=" + hs_token)
    keys: dict[str, Any] = {
        "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ES256": ec.generate_private_key(ec.SECP256R1()),
        "EdDSA": ed25519.Ed25519PrivateKey.generate(),
    }
    for algorithm, key in keys.items():
        path = f"{tmp}/{algorithm}.pem"
        with open(path, "wb") as pem:
            pem.write(
                key.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )
        access = Access(Settings(jwt_public_key=path))
        query = b"token=" + jwt.encode(claims, key, algorithm=algorithm).encode()
        checks[f"jwt-{algorithm}"] = lambda access=access, query=query: access.grant(query)
    return checks


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--checks", type=int, default=2000, help="token checks per run")
    args = parser.parse_args()
    count, repeats = args.connections, args.repeats
    for with_expiry in (False, True):
        label = "with exp" if with_expiry else "without exp"
        runs = [subscribe_cost(count, with_expiry) for _ in range(repeats)]
        report(f"subscribe+unsubscribe, {label}", "us/connection", runs, connections=count)
        runs = [memory_cost(count, with_expiry) for _ in range(repeats)]
        report(f"hub memory, {label}", "bytes/connection", runs, connections=count)
    runs = [await expire_all_cost(count) for _ in range(repeats)]
    report("timer closing all at once", "us/connection", runs, connections=count)
    with tempfile.TemporaryDirectory() as tmp:
        for name, check in token_checks(tmp).items():
            runs = [check_cost(check, args.checks) for _ in range(repeats)]
            report(f"token check on connect: {name}", "us/connection", runs)


if __name__ == "__main__":
    uvloop.run(main())
