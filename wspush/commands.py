"""`wspush keygen | token | publish | check`: the command line for people.

Each command takes the same settings as the server (flags, `WSPUSH_*`, `.env`), so
`wspush token` signs with the key the server verifies with, and `wspush publish` and
`wspush check` talk to the Redis and prefix the server uses.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import sys
import uuid
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from wspush.jwt_tokens import sign_jwt
from wspush.publish import apublish
from wspush.sentinel import redis_from_url
from wspush.settings import Settings, redact_url
from wspush.subscriber import pattern_for
from wspush.tokens import sign

KEY_BYTES = 32
JWT_TTL = 600.0
CHECK_TIMEOUT = 5.0


def keygen(size: int = KEY_BYTES) -> str:
    """A new random key in the form `--hmac` takes: unpadded base64url.

    Never one that starts with '-': `wspush -hmac -K...` would read it as an option.
    """
    while True:
        key = base64.urlsafe_b64encode(secrets.token_bytes(size)).rstrip(b"=").decode()
        if not key.startswith("-"):
            return key


def token(settings: Settings, payload: str) -> str:
    """A token for `payload`, signed with the first configured key (the current one)."""
    if not settings.keys:
        raise CommandError("no key configured: set --hmac or WSPUSH_KEY (see `wspush keygen`)")
    return sign(settings.keys[0], payload.encode(), settings.hmac_digest)


def jwt_token(settings: Settings, sub: str, ttl: float) -> str:
    """A JWT for `sub`, valid `ttl` seconds, signed HS256 with the first --jwt-secret,
    with the audience and issuer the server checks."""
    if not settings.jwt_secret:
        raise CommandError("no JWT secret configured: set --jwt-secret or WSPUSH_JWT_SECRET")
    if not sub:
        raise CommandError("give the JWT's route with --sub")
    if settings.jwt_max_age and ttl > settings.jwt_max_age:
        raise CommandError(f"--ttl {ttl:g} is longer than --jwt-max-age {settings.jwt_max_age:g}")
    secret = next(key for key in settings.jwt_keys if key.algorithms[0].startswith("HS"))
    return sign_jwt(
        secret.key, sub, ttl, audience=settings.jwt_audience, issuer=settings.jwt_issuer
    )


class CommandError(Exception):
    """A command could not do its job; the message says why, in one line."""


def redis_client(settings: Settings) -> aioredis.Redis:
    """A client for the server's Redis (a Sentinel's primary too), with its TLS choice."""
    return redis_from_url(
        settings.redis_url,
        tls_verify=settings.redis_tls_verify,
        socket_connect_timeout=CHECK_TIMEOUT,
        socket_timeout=CHECK_TIMEOUT,
    )


def read_message(message: str) -> bytes:
    """The message argument, or standard input (as bytes, unchanged) when it is `-`."""
    return sys.stdin.buffer.read() if message == "-" else message.encode()


async def publish(settings: Settings, token_text: str, message: bytes) -> int | str:
    """PUBLISH <prefix><token> <message>; returns how many subscribers Redis reached, or
    with `--history-size`, the id of the message recorded in the token's history."""
    client = redis_client(settings)
    try:
        return await apublish(
            client,
            token_text,
            message,
            settings.prefix,
            history=settings.history_size,
            history_ttl=settings.history_ttl,
        )
    except RedisError as exc:
        raise CommandError(f"Redis at {redact_url(settings.redis_url)}: {exc}") from None
    finally:
        await client.aclose()


async def check(settings: Settings, say: Any = print) -> bool:
    """Settings valid (they parsed), Redis reachable, and a message published under the
    prefix comes back on a pattern subscription like the server's. Says each step."""
    say(f"ok    settings: redis {redact_url(settings.redis_url)}, prefix {settings.prefix!r}")
    client = redis_client(settings)
    pubsub = client.pubsub()
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await client.ping()
            say("ok    redis answers PING")
            channel = settings.prefix_bytes + b"wspush-check-" + uuid.uuid4().hex.encode() * 2
            await pubsub.psubscribe(pattern_for(settings.prefix_bytes))
            await client.publish(channel, b"check")
            while True:
                reply = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if reply is not None and reply["channel"] == channel:
                    break
            say(f"ok    a message published under {settings.prefix!r} came back")
            say(f"info  {await count_relays(client)}")
        return True
    except TimeoutError:
        say(
            f"FAIL  no answer from Redis at {redact_url(settings.redis_url)} in {CHECK_TIMEOUT:g} s"
        )
    except (RedisError, OSError) as exc:
        say(f"FAIL  Redis at {redact_url(settings.redis_url)}: {exc}")
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()
    return False


async def count_relays(client: aioredis.Redis) -> str:
    """How many wspush subscriptions this Redis has now, where the user may ask."""
    try:
        clients = await client.client_list(_type="pubsub")
    except RedisError:
        return "cannot list Redis clients (no permission): wspush relays unknown"
    relays = sum(1 for entry in clients if entry.get("name") == "wspush")
    return f"wspush relays subscribed to this Redis now: {relays}"
