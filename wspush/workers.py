"""Several worker processes on one listening socket (`wspush --workers N`).

uvicorn's `Multiprocess` supervisor binds the socket, starts N processes, restarts any
that die and passes SIGTERM/SIGINT on. Each worker is a complete, independent relay
(its own Redis subscription, hub and limits), because a pub/sub message reaches every
subscriber anyway; their figures are summed through `wspush.shared_stats`.
"""

from __future__ import annotations

import logging
import socket
import tempfile
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

from wspush.factory import create_app
from wspush.logs import configure_logging
from wspush.serving import tune_garbage_collector
from wspush.settings import Settings, parse_address

logger = logging.getLogger("wspush")


class WorkerConfig(uvicorn.Config):
    """uvicorn's settings for one worker, plus what it needs to build its own relay.

    The supervisor pickles this into each new process, where `load()` makes the app
    from `settings` (the parent's, flags included) instead of importing one.
    """

    def __init__(
        self,
        settings: Settings,
        stats_dir: str,
        expvar_socket: socket.socket | None,
        **options: Any,
    ) -> None:
        super().__init__("wspush.app:app", workers=settings.workers, **options)
        self.settings = settings
        self.stats_dir = stats_dir
        self.expvar_socket = expvar_socket

    def load(self) -> None:
        if not self.loaded:
            configure_logging(self.settings.log_level, self.settings.log_format)
            app = create_app(self.settings)
            app.state.relay.share_stats(self.stats_dir, self.expvar_socket)
            tune_garbage_collector()
            self.app = app
        super().load()


def serve_workers(settings: Settings, options: dict[str, Any]) -> None:
    """Run `settings.workers` relays under uvicorn's supervisor until told to stop."""
    expvar_socket = bind(settings.expvar) if settings.expvar else None
    with tempfile.TemporaryDirectory(prefix="wspush-stats-") as stats_dir:
        config = WorkerConfig(settings, stats_dir, expvar_socket, **options)
        listener = config.bind_socket()
        logger.info(
            "starting %d worker processes on %s:%d", settings.workers, settings.host, settings.port
        )
        Multiprocess(config, sockets=[listener]).run()


def bind(address: str) -> socket.socket:
    """A listening TCP socket the workers share (for the -expvar listener)."""
    host, port = parse_address("expvar", address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(socket.SOMAXCONN)
    sock.set_inheritable(True)
    return sock
