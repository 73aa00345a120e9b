"""Redis Sentinel: `redis+sentinel://` URLs, and clients that ask the sentinels for the primary.

redis-py speaks Sentinel (`redis.asyncio.sentinel.Sentinel`) but has no URL for it, while
wspush takes its Redis as one URL (`--redis`, `REDIS_URL`). This module adds the URL form
that Python tools already share (the `Redis-Sentinel-Url` package, prefect-redis):

    redis+sentinel://[[username]:password@]host[:port][,host[:port]...]/master-name[/db]
        [?sentinel_username=NAME&sentinel_password=SECRET]
    rediss+sentinel://...   (TLS to the sentinels and to the Redis servers)

- the hosts are sentinels, port 26379 unless given; an IPv6 host is written `[::1]:26379`;
- the user and password before `@` are those of the Redis servers (primary and replicas);
- `sentinel_username` / `sentinel_password` authenticate to the sentinels themselves,
  for sentinels that have `requirepass` or ACLs (give the same secret twice when both use
  one password);
- user, password and master name are percent-decoded.

A client built here connects lazily: every new connection first asks the sentinels which
server is the primary of `master-name` now. wspush's subscriber builds a fresh client for
every (re)connection, so after a failover its ordinary reconnect loop lands on the new
primary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel

SCHEMES = ("redis+sentinel", "rediss+sentinel")
DEFAULT_PORT = 26379
QUERY_OPTIONS = ("sentinel_username", "sentinel_password")
FORMAT = "redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/master-name[/db]"
# Connection options of the Redis servers that also apply to the sentinels.
_SHARED_OPTIONS = ("socket_connect_timeout", "socket_keepalive", "retry")
SENTINEL_TIMEOUT = 5.0  # a sentinel that accepts but never answers must not stall discovery


class SentinelURLError(ValueError):
    """A `redis+sentinel://` URL that cannot work; the message never contains a secret."""


@dataclass(frozen=True)
class SentinelTarget:
    """What a `redis+sentinel://` URL names: where the sentinels are and whose primary."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    tls: bool = False

    def client(self, **options: Any) -> SentinelPrimary:
        """A client of the current primary; `options` are redis-py connection options.

        The sentinels get the options that make sense for them (timeouts, keepalive,
        retry, TLS) and their own credentials.
        """
        sentinel_options: dict[str, Any] = {
            key: value
            for key, value in options.items()
            if key in _SHARED_OPTIONS or key.startswith("ssl_")
        }
        sentinel_options["socket_timeout"] = options.get("socket_connect_timeout", SENTINEL_TIMEOUT)
        sentinel_options["username"] = self.sentinel_username
        sentinel_options["password"] = self.sentinel_password
        if self.tls:
            sentinel_options["ssl"] = True
            options = {**options, "ssl": True}
        sentinel = Sentinel([], sentinel_kwargs=sentinel_options)  # type: ignore[no-untyped-call]
        sentinel.sentinels = [
            SentinelNode(host=host, port=port, **sentinel_options) for host, port in self.sentinels
        ]
        client: SentinelPrimary = sentinel.master_for(
            self.master,
            redis_class=SentinelPrimary,
            db=self.db,
            username=self.username,
            password=self.password,
            **options,
        )
        client.sentinel_clients = tuple(sentinel.sentinels)
        return client


class SentinelNode(aioredis.Redis):
    """A client of one sentinel, named briefly: redis-py's "No master found" error lists
    every sentinel by its repr, which is otherwise a whole screen of connection options."""

    def __repr__(self) -> str:
        options = self.connection_pool.connection_kwargs
        return f"sentinel {options.get('host')}:{options.get('port')}"


class SentinelPrimary(aioredis.Redis):
    """A client of the primary that also closes its connections to the sentinels."""

    sentinel_clients: tuple[aioredis.Redis, ...] = ()

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        try:
            await super().aclose(close_connection_pool)
        finally:
            for sentinel in self.sentinel_clients:
                await sentinel.aclose()


def is_sentinel_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in SCHEMES


def redis_from_url(url: str, *, tls_verify: bool = True, **options: Any) -> aioredis.Redis:
    """`Redis.from_url`, and for a `redis+sentinel://` URL a client of the current primary.

    `tls_verify=False` accepts any certificate on a `rediss` URL (the
    `--no-redis-tls-verify` setting, for providers with self-signed certificates).
    """
    if url.startswith(("rediss:", "rediss+sentinel:")) and not tls_verify:
        options["ssl_cert_reqs"] = "none"
    if is_sentinel_url(url):
        return parse_sentinel_url(url).client(**options)
    return aioredis.Redis.from_url(url, **options)


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Split a `redis+sentinel://` URL; raises SentinelURLError saying what is wrong."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SCHEMES:
        raise SentinelURLError(f"not a {' or '.join(SCHEMES)} URL")
    rest, _, query = rest.partition("?")
    rest = rest.partition("#")[0]
    authority, _, path = rest.partition("/")
    userinfo, at, hosts = authority.rpartition("@")
    if not at:
        hosts = authority
    username, password = _credentials(userinfo)
    segments = [segment for segment in path.split("/") if segment]
    if not segments:
        raise SentinelURLError(f"the master name is missing (expected {FORMAT})")
    if len(segments) > 2:
        raise SentinelURLError(f"too many path segments (expected {FORMAT})")
    db = 0
    if len(segments) == 2:
        if not segments[1].isdigit():
            raise SentinelURLError(f"the database {segments[1]!r} is not a number")
        db = int(segments[1])
    options = _query(query)
    return SentinelTarget(
        sentinels=tuple(_sentinel_address(member) for member in hosts.split(",")),
        master=unquote(segments[0]),
        db=db,
        username=username,
        password=password,
        sentinel_username=options.get("sentinel_username") or None,
        sentinel_password=options.get("sentinel_password") or None,
        tls=scheme.lower() == "rediss+sentinel",
    )


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    if not userinfo:
        return None, None
    user, _, password = userinfo.partition(":")  # a lone word is a user, as in redis-py
    return unquote(user) or None, unquote(password) or None


def _sentinel_address(member: str) -> tuple[str, int]:
    """`host`, `host:port`, `[v6]` or `[v6]:port` of one sentinel."""
    if not member:
        raise SentinelURLError(f"a sentinel address is empty (expected {FORMAT})")
    host, port_text = member, ""
    if member.startswith("["):
        host, bracket, after = member[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise SentinelURLError(f"bad sentinel address {member!r}")
        port_text = after[1:]
    elif ":" in member:
        host, _, port_text = member.rpartition(":")
    if not host or (":" in host and not member.startswith("[")):
        raise SentinelURLError(f"bad sentinel address {member!r}")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        raise SentinelURLError(f"bad port in sentinel address {member!r}")
    return host, int(port_text)


def _query(query: str) -> dict[str, str]:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise SentinelURLError("the query string is malformed") from None
    options: dict[str, str] = {}
    for key, value in pairs:
        if key not in QUERY_OPTIONS:
            raise SentinelURLError(
                f"unknown option {key!r} (a sentinel URL takes {', '.join(QUERY_OPTIONS)})"
            )
        options[key] = value
    return options
