"""One validated settings object, built from flags, environment and defaults.

Every setting has one name used three ways: the field name (`max_per_token`), a long
option (`--max-per-token`) and an environment variable (`WSPUSH_MAX_PER_TOKEN`). The six
settings of the Go program also keep their single-dash Go flag (`-addr`) and Go's
environment names (`WSPUSH_KEY`, `WSPUSH_PING`). Values are checked once, in
`Settings.__post_init__`, so the rest of the code can trust them.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dotenv import load_dotenv

from wspush.jwt_keys import VerificationKey, public_keys, secret_keys
from wspush.sentinel import SentinelURLError, is_sentinel_url, parse_sentinel_url

DEFAULT_REDIS = "localhost:6379"
WS_FRAME_TYPES = ("binary", "text", "auto")
HMAC_DIGESTS = ("md5", "sha256")
SUBSCRIBE_MODES = ("pattern", "exact")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
LOG_FORMATS = ("text", "json")
# Enough for any browser's or proxy's request (their own limits are 8 to 64 KiB) and a
# JWT of a few KiB in ?token=; Go's net/http allows 1 MiB.
DEFAULT_MAX_REQUEST_HEAD = 64 * 1024
MIN_MAX_REQUEST_HEAD = 1024
_BASE64URL = re.compile(rb"[A-Za-z0-9_-]*")


class SettingsError(ValueError):
    """A setting has a value that cannot work; the message names the setting."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"invalid {option_name(name)}: {message}")
        self.setting = name


def option_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_name(name: str) -> str:
    return "WSPUSH_" + name.upper()


def _setting(
    default: Any,
    help: str,
    *,
    go: bool = False,
    env: tuple[str, ...] = (),
    secret: bool = False,
    choices: tuple[str, ...] = (),
    metavar: str = "",
) -> Any:
    """Declare a setting: its default and how flags, env and docs present it."""
    return field(
        default=default,
        metadata={
            "help": help,
            "go": go,
            "env": env,
            "secret": secret,
            "choices": choices,
            "metavar": metavar,
        },
    )


@dataclass(frozen=True)
class Settings:
    """Everything wspush can be told. Construct directly or with `Settings.from_env()`."""

    addr: str = _setting(
        "localhost:8080",
        "address to listen on, host:port (':8080' means every interface); "
        "when not set and PORT is, 0.0.0.0:$PORT",
        go=True,
        metavar="HOST:PORT",
    )
    redis: str | None = _setting(
        None,
        "Redis to subscribe to: host:port, or a redis://, rediss:// or unix:// URL, "
        "or redis+sentinel://[:password@]host:26379,host2:26379/master-name for Sentinel "
        f"(also read from REDIS_URL; default {DEFAULT_REDIS}, where `wspush` starts an "
        "embedded redis-server if nothing answers)",
        go=True,
        env=("REDIS_URL",),
        metavar="ADDR|URL",
    )
    prefix: str = _setting(
        "example.",
        "channel prefix: wspush runs PSUBSCRIBE <prefix>* and routes <prefix>TOKEN to ?token=TOKEN",
        go=True,
    )
    hmac: str = _setting(
        "",
        "base64url (unpadded) key: when set, tokens must be payload+HMAC signatures "
        "(also read from WSPUSH_KEY); several keys separated by commas all verify, "
        "for rotation",
        go=True,
        env=("WSPUSH_KEY",),
        secret=True,
        metavar="KEY",
    )
    ping: str = _setting(
        "",
        "heartbeat payload; empty sends SSE 'ping:' lines and WebSocket protocol pings",
        go=True,
        metavar="PAYLOAD",
    )
    expvar: str = _setting(
        "",
        "separate address serving JSON counters at /debug/vars (off when empty)",
        go=True,
        metavar="HOST:PORT",
    )
    hmac_digest: str = _setting(
        "md5",
        "HMAC of signed tokens: md5 (the Go program's) or sha256",
        choices=HMAC_DIGESTS,
    )
    jwt_secret: str = _setting(
        "",
        "secret for JWTs signed HS256 (HS384/HS512 with 48/64-byte secrets): when set, "
        "clients may connect with ?token=<JWT>, routed by its sub; several secrets "
        "separated by commas all verify (the first signs `wspush token --jwt`), for rotation",
        secret=True,
        metavar="SECRET",
    )
    jwt_public_key: str = _setting(
        "",
        "PEM file of the public key for JWTs signed RS256 (RSA), ES256 (P-256) or EdDSA "
        "(Ed25519); several files separated by commas all verify, for rotation",
        metavar="PATH",
    )
    jwt_audience: str = _setting(
        "", "when set, a JWT must carry this audience (aud)", metavar="AUDIENCE"
    )
    jwt_issuer: str = _setting("", "when set, a JWT must carry this issuer (iss)", metavar="ISSUER")
    jwt_leeway: float = _setting(
        5.0,
        "seconds of clock skew allowed on a JWT's exp, nbf and iat, on connect and on "
        "open connections",
        metavar="SECONDS",
    )
    jwt_require_exp: bool = _setting(
        True,
        "refuse a JWT without exp (--no-jwt-require-exp lets tokens that never expire in)",
    )
    jwt_max_age: float = _setting(
        0.0,
        "refuse a JWT whose lifetime, exp - iat, is longer than this (0: no maximum)",
        metavar="SECONDS",
    )
    ping_interval: float = _setting(45.0, "seconds between heartbeats", metavar="SECONDS")
    max_per_token: int = _setting(
        15, "connections allowed per token in this process; more are refused (429)", metavar="N"
    )
    max_connections: int = _setting(
        0,
        "connections this process accepts in all (0: no limit); more get 503 with Retry-After",
        metavar="N",
    )
    max_per_ip: int = _setting(
        0,
        "connections per client address (0: no limit); more get 429. Behind a proxy, set "
        "--trusted-proxies so the address comes from its X-Forwarded-For",
        metavar="N",
    )
    trusted_proxies: str = _setting(
        "127.0.0.1",
        "comma-separated proxy addresses whose X-Forwarded-For/-Proto headers are believed "
        "('*' for any, empty for none)",
        metavar="ADDRS",
    )
    queue_size: int = _setting(
        100,
        "messages buffered per connection; a message for a full buffer is dropped and counted",
        metavar="N",
    )
    max_message_size: int = _setting(
        8 * 1024 * 1024,
        "largest message relayed, in bytes; larger ones are dropped, logged and counted",
        metavar="BYTES",
    )
    max_drops: int = _setting(
        1000,
        "messages a connection may lose to a full buffer before it is disconnected as too "
        "slow (WebSocket close 1008; 0: never)",
        metavar="N",
    )
    ws_frame: str = _setting(
        "binary",
        "WebSocket frame type: binary, text, or auto (text when the message is valid UTF-8)",
        choices=WS_FRAME_TYPES,
    )
    cors_origins: str = _setting(
        "*",
        "comma-separated origins sent in Access-Control-Allow-Origin ('*' for any)",
        metavar="ORIGINS",
    )
    ws_compression: bool = _setting(
        False,
        "offer permessage-deflate to WebSocket clients: less bandwidth for large text, "
        "but each message is compressed per client (more CPU and memory)",
    )
    ws_origins: str = _setting(
        "",
        "comma-separated origins allowed to open a WebSocket (empty: any); others get 403",
        metavar="ORIGINS",
    )
    max_client_message: int = _setting(
        4096,
        "largest WebSocket message a client may send (it is read and discarded); "
        "larger ones close the connection with 1009",
        metavar="BYTES",
    )
    max_request_head: int = _setting(
        DEFAULT_MAX_REQUEST_HEAD,
        "largest request head (request line and headers) a client may send, in bytes; a "
        "larger one gets 431 and is closed, WebSocket and SSE alike (Go's limit: 1 MiB)",
        metavar="BYTES",
    )
    sse_retry: int = _setting(
        2000,
        "milliseconds an SSE client is told to wait before reconnecting after a shutdown "
        "(plus up to the same again of random jitter)",
        metavar="MS",
    )
    shutdown_timeout: float = _setting(
        3.0,
        "seconds to close connections on SIGTERM/SIGINT before they are cut",
        metavar="SECONDS",
    )
    redis_tls_verify: bool = _setting(
        True,
        "verify the certificate of a rediss:// server; turn off only for providers with "
        "self-signed certificates (such as Heroku Redis)",
    )
    redis_health_interval: float = _setting(
        15.0,
        "seconds between health checks of the subscription (a PING and a probe message "
        "to wspush's own channel); one unanswered means it is replaced",
        metavar="SECONDS",
    )
    subscribe_mode: str = _setting(
        "pattern",
        "pattern: one PSUBSCRIBE <prefix>* that receives every message (as the Go program); "
        "exact: SUBSCRIBE only the channels of tokens with clients here (SSUBSCRIBE on a "
        "cluster), for several instances sharing one Redis (see docs/scaling.md)",
        choices=SUBSCRIBE_MODES,
    )
    redis_cluster: bool = _setting(
        False,
        "the Redis is a Redis Cluster and --redis names any of its nodes; in exact mode "
        "publishers must use SPUBLISH (see docs/scaling.md)",
    )
    embedded_redis: bool = _setting(
        True,
        "let `wspush` start a redis-server on 127.0.0.1:6379 when no Redis is configured "
        "and none answers there",
    )
    metrics: bool = _setting(
        True,
        "serve Prometheus metrics at /metrics on the main listener (a plain GET; a "
        "WebSocket or SSE request to that path is still a client); the -expvar "
        "listener always serves them",
    )
    workers: int = _setting(
        1,
        "worker processes sharing the listening socket, each with its own Redis "
        "subscription and limits (see docs/scaling.md)",
        metavar="N",
    )
    demo: bool = _setting(
        False,
        "serve a demo page at GET /demo that shows one token's messages arriving over SSE "
        "and WebSocket side by side",
    )
    history_size: int = _setting(
        0,
        "messages kept per token for clients that reconnect (0: none, plain pub/sub); "
        "`wspush publish` and wspush.publish(history=N) record them (see README, Resume "
        "after reconnect)",
        metavar="N",
    )
    history_ttl: int = _setting(
        3600,
        "seconds a token's history is kept after its last publish",
        metavar="SECONDS",
    )
    log_level: str = _setting("info", "log level", choices=LOG_LEVELS)
    log_format: str = _setting(
        "text", "log line format: text, or json (one object per line)", choices=LOG_FORMATS
    )

    # Derived once, here, so nothing downstream parses strings again.
    keys: tuple[bytes, ...] = field(init=False, repr=False, compare=False)
    jwt_keys: tuple[VerificationKey, ...] = field(init=False, repr=False, compare=False)
    host: str = field(init=False, repr=False, compare=False)
    port: int = field(init=False, repr=False, compare=False)
    redis_url: str = field(init=False, repr=False, compare=False)
    allowed_origins: tuple[str, ...] = field(init=False, repr=False, compare=False)
    allowed_ws_origins: frozenset[bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        host, port = parse_address("addr", self.addr)
        derived = {
            "host": host,
            "port": port,
            "keys": tuple(decode_key(k.strip()) for k in self.hmac.split(",")) if self.hmac else (),
            "jwt_keys": (
                _parsed("jwt_secret", secret_keys, self.jwt_secret)
                + _parsed("jwt_public_key", public_keys, self.jwt_public_key)
            ),
            "redis_url": redis_url("redis", self.redis or DEFAULT_REDIS),
            "allowed_origins": parse_origins(self.cors_origins),
            "allowed_ws_origins": frozenset(
                o.strip().encode() for o in self.ws_origins.split(",") if o.strip()
            ),
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)
        if self.expvar:
            parse_address("expvar", self.expvar)
        _require(self.ping_interval > 0, "ping_interval", "must be greater than 0")
        _require(self.redis_health_interval > 0, "redis_health_interval", "must be greater than 0")
        _require(self.max_per_token >= 1, "max_per_token", "must be at least 1")
        _require(self.queue_size >= 1, "queue_size", "must be at least 1")
        _require(self.max_connections >= 0, "max_connections", "must be 0 or more")
        _require(self.max_per_ip >= 0, "max_per_ip", "must be 0 or more")
        _require(self.max_drops >= 0, "max_drops", "must be 0 or more")
        _require(self.max_message_size >= 1, "max_message_size", "must be at least 1")
        _require(self.max_client_message >= 125, "max_client_message", "must be at least 125")
        _require(
            self.max_request_head >= MIN_MAX_REQUEST_HEAD,
            "max_request_head",
            f"must be at least {MIN_MAX_REQUEST_HEAD}",
        )
        _require(self.sse_retry >= 0, "sse_retry", "must be 0 or more")
        _require(
            not (self.redis_cluster and self.redis_url.startswith("unix:")),
            "redis_cluster",
            "a cluster is reached over TCP, not a unix:// socket",
        )
        _require(self.shutdown_timeout > 0, "shutdown_timeout", "must be greater than 0")
        _require(self.workers >= 1, "workers", "must be at least 1")
        _require(self.history_size >= 0, "history_size", "must be 0 or more")
        _require(self.history_ttl >= 1, "history_ttl", "must be at least 1")
        _require(self.jwt_leeway >= 0, "jwt_leeway", "must be 0 or more")
        _require(self.jwt_max_age >= 0, "jwt_max_age", "must be 0 or more")
        for name in ("jwt_audience", "jwt_issuer", "jwt_max_age"):
            _require(
                not getattr(self, name) or bool(self.jwt_keys),
                name,
                "applies to JWTs: set --jwt-secret or --jwt-public-key too",
            )
        for setting in fields():
            choices = setting.metadata["choices"]
            value = getattr(self, setting.name)
            _require(
                not choices or value in choices,
                setting.name,
                f"{value!r} is not one of {', '.join(choices)}",
            )

    @property
    def jwt_configured(self) -> bool:
        """True when clients may connect with JWTs."""
        return bool(self.jwt_keys)

    @property
    def redis_configured(self) -> bool:
        """True when the user named a Redis (so wspush must never embed one)."""
        return self.redis is not None

    @property
    def prefix_bytes(self) -> bytes:
        return self.prefix.encode()

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, overrides: Mapping[str, str] | None = None
    ) -> Settings:
        """Build settings from command-line values (`overrides`), then environment, then defaults.

        All values arrive as strings and are converted by the field's type.
        """
        environ = os.environ if environ is None else environ
        raw: dict[str, str] = {}
        for setting in fields():
            for variable in (env_name(setting.name), *setting.metadata["env"]):
                if environ.get(variable):
                    raw[setting.name] = environ[variable]
                    break
        raw.update(overrides or {})
        if "addr" not in raw and environ.get("PORT"):
            raw["addr"] = f"0.0.0.0:{environ['PORT']}"
        return cls(**{name: convert(name, value) for name, value in raw.items()})

    def describe(self) -> dict[str, object]:
        """Effective settings for the start-up log, secrets redacted."""
        shown: dict[str, object] = {}
        for setting in fields():
            value = getattr(self, setting.name)
            if setting.metadata["secret"] and value:
                value = "<redacted>"
            shown[setting.name] = value
        shown["redis"] = redact_url(self.redis_url)
        return shown


def load_env_file(path: str = ".env") -> None:
    """Load a `.env` file from the working directory into os.environ (set variables win)."""
    load_dotenv(os.path.join(os.getcwd(), path), override=False)


def fields() -> tuple[dataclasses.Field[Any], ...]:
    """The user-facing settings, in documentation order."""
    return tuple(f for f in dataclasses.fields(Settings) if f.init)


def _parsed(
    name: str, parse: Callable[[str], tuple[VerificationKey, ...]], value: str
) -> tuple[VerificationKey, ...]:
    """Keys from a setting's value (none when it is empty); a bad one names the setting."""
    if not value:
        return ()
    try:
        return parse(value)
    except ValueError as exc:
        raise SettingsError(name, str(exc)) from None


def _require(condition: bool, name: str, message: str) -> None:
    if not condition:
        raise SettingsError(name, message)


def convert(name: str, value: str) -> Any:
    """Convert one string value to the type of setting `name`."""
    kind = {f.name: f for f in fields()}[name].default
    try:
        if isinstance(kind, bool):
            return parse_bool(value)
        if isinstance(kind, int):
            return int(value)
        if isinstance(kind, float):
            return float(value)
    except ValueError:
        raise SettingsError(name, f"{value!r} is not a {type(kind).__name__}") from None
    return value


def parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


def parse_address(name: str, value: str) -> tuple[str, int]:
    """Split Go's `host:port` (host may be empty or a bracketed IPv6 address)."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise SettingsError(name, f"{value!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise SettingsError(name, f"{value!r} has a bad IPv6 address") from None
    return host or "0.0.0.0", int(port_text)


def redis_url(name: str, value: str) -> str:
    """Accept Go's `host:port` as well as redis://, rediss://, unix:// and sentinel URLs."""
    if is_sentinel_url(value):
        try:
            parse_sentinel_url(value)
        except SentinelURLError as exc:
            raise SettingsError(name, f"{redact_url(value)!r}: {exc}") from None
        return value
    if "://" in value:
        scheme = value.split("://", 1)[0].lower()
        if scheme not in ("redis", "rediss", "unix"):
            raise SettingsError(
                name,
                f"unsupported scheme {scheme!r} in {redact_url(value)!r} "
                "(use redis, rediss, unix, redis+sentinel or rediss+sentinel)",
            )
        return value
    host, port = parse_address(name, value)
    if ":" in host:
        host = f"[{host}]"
    return f"redis://{host}:{port}"


def redact_url(url: str) -> str:
    """Hide the passwords of a redis URL for logs (a sentinel URL has one in its query)."""
    url = re.sub(r"([?&][a-z_]*password=)[^&#]*", r"\1***", url)
    return re.sub(r"://([^:@/]*):[^@/]*@", r"://\1:***@", url)


def decode_key(value: str) -> bytes:
    """Decode an HMAC key the way Go's base64.RawURLEncoding does (no padding)."""
    key = decode_base64url(value.encode())
    if key is None or not key:
        raise SettingsError(
            "hmac", "the key must be unpadded base64url (A-Z a-z 0-9 - _ only, no '=')"
        )
    return key


def decode_base64url(data: bytes) -> bytes | None:
    """Go's `base64.RawURLEncoding.DecodeString`: None where Go returns an error.

    Go skips CR and LF, rejects '=' padding and characters outside the URL alphabet, and
    rejects a length that leaves a single dangling character.
    """
    data = data.replace(b"\r", b"").replace(b"\n", b"")
    if not _BASE64URL.fullmatch(data) or len(data) % 4 == 1:
        return None
    try:
        return base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))
    except binascii.Error:
        return None


def parse_origins(value: str) -> tuple[str, ...]:
    origins = tuple(o.strip() for o in value.split(",") if o.strip())
    if not origins:
        raise SettingsError("cors_origins", "give '*' or at least one origin")
    return origins
