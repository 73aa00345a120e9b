"""The `wspush` command: Go wspush's flags, long options and environment.

    wspush -addr :8080 -redis localhost:6379 -prefix example.
    wspush keygen | token PAYLOAD | token --jwt --sub SUB --ttl SECONDS
    wspush publish TOKEN MESSAGE | check

Every setting is a `--long-option` and a `WSPUSH_*` variable; the Go program's six
single-dash flags work as they did. Bad values stop start-up with one line naming the
setting. The subcommands (see `wspush.commands`) take the same settings; serving is
`wspush.serving` (one process) or `wspush.workers` (several).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

from wspush import commands
from wspush.embedded import start_embedded_redis
from wspush.logs import configure_logging
from wspush.serving import UVICORN_GRACE, serve_one, uvicorn_options
from wspush.settings import (
    Settings,
    SettingsError,
    env_name,
    fields,
    load_env_file,
    option_name,
)
from wspush.version import __version__
from wspush.workers import serve_workers

EXIT_USAGE = 2
__all__ = ["UVICORN_GRACE", "build_parser", "main"]


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


def serve(settings: Settings) -> None:
    # uvicorn re-raises the signal that stopped it once it is done; with these no-op
    # handlers in place that ends here, so cleanup below runs and the exit status is 0.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: None)
    if settings.workers > 1:
        serve_workers(settings, uvicorn_options(settings))
    else:
        serve_one(settings)


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
