"""The `wspush` command: Go wspush's flags, long options, environment, and uvicorn.

    wspush -addr :8080 -redis localhost:6379 -prefix example.
    wspush keygen | token PAYLOAD | token --jwt --sub SUB --ttl SECONDS
    wspush publish TOKEN MESSAGE | check

Every setting is a `--long-option` and a `WSPUSH_*` variable; the Go program's six
single-dash flags work as they did. Bad values stop start-up with one line naming the
setting. The subcommands (see `wspush.commands`) take the same settings.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

import uvicorn

from wspush import __version__, commands
from wspush.embedded import EmbeddedRedis, find_redis_server, redis_answers
from wspush.factory import create_app
from wspush.logs import configure_logging, uvicorn_log_level
from wspush.relay import Relay
from wspush.settings import (
    DEFAULT_REDIS,
    Settings,
    SettingsError,
    env_name,
    fields,
    load_env_file,
    option_name,
)
from wspush.workers import serve_workers

logger = logging.getLogger("wspush")

EXIT_USAGE = 2
# Left for uvicorn's own shutdown after wspush has drained its clients.
UVICORN_GRACE = 1
GC_YOUNG_THRESHOLD = 50_000


EPILOG = (
    "Precedence: command line, then environment (and a .env file), then defaults. "
    "PORT (as on Heroku) means 0.0.0.0:$PORT when no address is set."
)


COMMANDS = {
    "keygen": "print a new random key for --hmac / WSPUSH_KEY",
    "token": "print a token for PAYLOAD, signed with the configured key; "
    "--jwt --sub SUB --ttl SECONDS: a JWT signed with the configured --jwt-secret",
    "publish": "PUBLISH MESSAGE to TOKEN's channel on the configured Redis and prefix",
    "check": "check the settings, that Redis answers, and that a message published under "
    "the prefix comes back on a subscription like the relay's",
}


def build_parser(command: str = "serve") -> argparse.ArgumentParser:
    """The relay's options, or those of one command (`wspush COMMAND --help`).

    A command comes first (`wspush publish -redis ... TOKEN MESSAGE`), so everything
    the Go program accepted still means what it did.
    """
    if command != "serve":
        return command_parser(command)
    listed = "\n".join(f"  {name:8} {help}" for name, help in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="wspush",
        usage="%(prog)s [COMMAND] [options]",
        description="Relay Redis pub/sub messages (PUBLISH <prefix><token> <message>) to "
        "WebSocket and Server-Sent Events clients connected with ?token=<token>.",
        epilog=f"commands (wspush COMMAND --help):\n{listed}\n\n{EPILOG}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
        parents=[settings_parser()],
    )
    parser.add_argument("--version", action="version", version=f"wspush {__version__}")
    parser.set_defaults(command="serve")
    return parser


def command_parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"wspush {command}",
        description=COMMANDS[command],
        epilog=EPILOG,
        allow_abbrev=False,
        parents=[settings_parser()],
    )
    parser.set_defaults(command=command)
    if command == "keygen":
        parser.add_argument(
            "--bytes",
            type=int,
            default=commands.KEY_BYTES,
            dest="key_bytes",
            help="random bytes in the key (default %(default)s)",
        )
    elif command == "token":
        parser.add_argument(
            "payload", nargs="?", help="what the token stands for, e.g. a user id (HMAC)"
        )
        parser.add_argument(
            "--jwt",
            action="store_true",
            help="print a JWT signed with the first --jwt-secret instead (HS256)",
        )
        parser.add_argument("--sub", help="with --jwt: the route (sub) the JWT opens")
        parser.add_argument(
            "--ttl",
            type=float,
            default=commands.JWT_TTL,
            help="with --jwt: seconds until it expires (default %(default)s)",
        )
    elif command == "publish":
        parser.add_argument("token", help="the token clients connect with")
        parser.add_argument("message", help="the message; - reads it from standard input")
    return parser


def settings_parser() -> argparse.ArgumentParser:
    """Every setting as an option: Go's single-dash flag where it had one, `--long`."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for setting in fields():
        names = [option_name(setting.name)]
        if setting.metadata["go"]:
            names.insert(0, "-" + setting.name)
        envs = ", ".join([env_name(setting.name), *setting.metadata["env"]])
        default = "none" if setting.default is None else repr(setting.default)
        help_text = f"{setting.metadata['help']} [env {envs}; default {default}]"
        if isinstance(setting.default, bool):
            parser.add_argument(
                *names,
                dest=setting.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
            continue
        parser.add_argument(
            *names,
            dest=setting.name,
            default=argparse.SUPPRESS,
            help=help_text,
            metavar=setting.metadata["metavar"] or setting.name.upper(),
            choices=setting.metadata["choices"] or None,
        )
    return parser


def parse_settings(argv: Sequence[str] | None) -> Settings:
    """Settings from the command line and environment; exits with one line on bad values."""
    return parse(argv)[0]


def parse(argv: Sequence[str] | None) -> tuple[Settings, argparse.Namespace]:
    """Settings, and the command with its own arguments."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "serve"
    parser = build_parser(command)
    args = parser.parse_args(argv)
    load_env_file()
    names = {setting.name for setting in fields()}
    overrides = {name: str(value) for name, value in vars(args).items() if name in names}
    try:
        return Settings.from_env(overrides=overrides), args
    except SettingsError as exc:
        parser.exit(EXIT_USAGE, f"wspush: {exc}\n")


class DrainingServer(uvicorn.Server):
    """uvicorn, but on shutdown wspush closes its clients before uvicorn cuts them.

    uvicorn's own shutdown closes WebSockets with 1012 and waits for SSE responses;
    draining first gives WebSockets 1001 and SSE streams a clean end with a retry hint.
    """

    def __init__(self, config: uvicorn.Config, relay: Relay) -> None:
        super().__init__(config)
        self.relay = relay

    async def shutdown(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        for server in getattr(self, "servers", []):
            server.close()  # stop accepting before draining
        await self.relay.drain(self.relay.settings.shutdown_timeout)
        await super().shutdown(sockets)  # type: ignore[arg-type]


def uvicorn_config(settings: Settings, app: object) -> uvicorn.Config:
    """uvicorn settings that wspush depends on (see README, 'Running under uvicorn')."""
    return uvicorn.Config(app, **uvicorn_options(settings))  # type: ignore[arg-type]


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    return dict(
        host=settings.host,
        port=settings.port,
        lifespan="on",
        log_config=None,  # wspush configures logging
        log_level=uvicorn_log_level(settings.log_level),
        access_log=False,
        # Client addresses (for --max-per-ip and logs) from these proxies' headers only.
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=settings.trusted_proxies or None,
        server_header=False,
        loop="uvloop",
        # uvicorn's httptools and websockets-sansio protocols, plus direct writes.
        http="wspush.protocols:HttpToolsDirectProtocol",
        ws="wspush.protocols:WebSocketsSansIODirectProtocol",
        ws_max_size=settings.max_client_message,
        ws_per_message_deflate=settings.ws_compression,
        # wspush's own timer sends every heartbeat, Ping frames included, one write each
        # (uvicorn's keep-alive would cost two timers and a pong parse per connection).
        ws_ping_interval=None,
        ws_ping_timeout=None,
        timeout_graceful_shutdown=UVICORN_GRACE,
    )


def start_embedded_redis(settings: Settings) -> EmbeddedRedis | None:
    """Start a redis-server when none is configured and none answers at the default."""
    if settings.redis_configured or not settings.embedded_redis:
        return None
    host, port = DEFAULT_REDIS.rsplit(":", 1)
    if redis_answers(host, int(port)):
        return None
    executable = find_redis_server()
    if executable is None:
        logger.error(
            "no Redis configured, none at %s, and no redis-server to embed "
            "(pip install 'wspush[embedded]' or set --redis); retrying every second",
            DEFAULT_REDIS,
        )
        return None
    embedded = EmbeddedRedis(executable)
    embedded.start()
    return embedded


def serve(settings: Settings) -> None:
    # uvicorn re-raises the signal that stopped it once it is done; with these no-op
    # handlers in place that ends here, so cleanup below runs and the exit status is 0.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: None)
    if settings.workers > 1:
        serve_workers(settings, uvicorn_options(settings))
        return
    app = create_app(settings)
    tune_garbage_collector()
    server = DrainingServer(uvicorn_config(settings, app), app.state.relay)
    server.run()  # on uvloop
    if not server.started:
        raise SystemExit(1)


def tune_garbage_collector() -> None:
    """Keep the cyclic GC from rescanning every connection's objects over and over.

    Each connection holds a few hundred small objects; with CPython's default
    thresholds a full collection runs every few hundred connections and walks them
    all, which made accepting 10,000 connections take seconds. Start-up objects are
    frozen out of collections, and collections run a hundredth as often.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 50, 1000)


def main(argv: Sequence[str] | None = None) -> int:
    settings, args = parse(argv)
    if args.command != "serve":
        return run_command(settings, args)
    configure_logging(settings.log_level, settings.log_format)
    try:
        embedded = start_embedded_redis(settings)
    except RuntimeError as exc:
        print(f"wspush: {exc}", file=sys.stderr)
        return 1
    try:
        serve(settings)
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


def run_command(settings: Settings, args: argparse.Namespace) -> int:
    """keygen, token, publish or check; 0 on success, 1 with one line on stderr if not."""
    try:
        if args.command == "keygen":
            print(commands.keygen(args.key_bytes))
        elif args.command == "token" and args.jwt:
            print(commands.jwt_token(settings, args.sub or args.payload or "", args.ttl))
        elif args.command == "token":
            if not args.payload:
                raise commands.CommandError("give the PAYLOAD to sign (or --jwt --sub SUB)")
            print(commands.token(settings, args.payload))
        elif args.command == "publish":
            message = commands.read_message(args.message)
            result = asyncio.run(commands.publish(settings, args.token, message))
            if isinstance(result, str):
                print(f"published {len(message)} bytes with id {result}")
            else:
                print(f"published {len(message)} bytes to {result} subscriber(s)")
        elif args.command == "check":
            return 0 if asyncio.run(commands.check(settings)) else 1
    except (commands.CommandError, ValueError) as exc:
        print(f"wspush {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0
