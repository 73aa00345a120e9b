"""Several worker processes on one listening socket (`wspush --workers N`).

uvicorn's `Multiprocess` supervisor binds the socket, starts N processes, restarts any
that die and passes SIGTERM/SIGINT on. Each worker is a complete, independent relay
(its own Redis subscription, hub and limits), because a pub/sub message reaches every
subscriber anyway.

Metrics: each worker writes a snapshot of its counters to a directory shared with the
others every `SNAPSHOT_INTERVAL` seconds, and whichever worker answers a scrape
(`/metrics`, `/debug/vars`) sums them: running totals of every worker that ever ran,
levels (open connections, subscription up) of the live ones. So a scrape sees the whole
instance, at most `SNAPSHOT_INTERVAL` old for the other workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

from wspush.metrics import Snapshot, SnapshotSource
from wspush.settings import Settings, parse_address

logger = logging.getLogger("wspush")

SNAPSHOT_INTERVAL = 1.0


class SharedStats:
    """This worker's snapshot file, and the sum of every worker's."""

    def __init__(self, directory: str, own: SnapshotSource) -> None:
        self.directory = Path(directory)
        self.own = own
        self.pid = os.getpid()

    def write(self) -> None:
        """Publish this worker's figures (atomically: a reader never sees half a file)."""
        snapshot = self.own()
        data = json.dumps(
            {
                "stats": snapshot.stats,
                "gauges": snapshot.gauges,
                "latency_counts": snapshot.latency_counts,
                "latency_total": snapshot.latency_total,
            }
        )
        path = self.directory / f"{self.pid}.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(data)
        temporary.replace(path)

    def combined(self) -> Snapshot:
        """Every worker's figures summed, this worker's taken live."""
        live, exited = [self.own()], list[Snapshot]()
        for path in self.directory.glob("*.json"):
            pid = int(path.stem)
            if pid == self.pid:
                continue
            try:
                snapshot = Snapshot(**json.loads(path.read_text()))
            except (OSError, ValueError, TypeError):
                continue  # being replaced, or not ours
            (live if process_exists(pid) else exited).append(snapshot)
        return Snapshot.combine(live, exited)

    @contextlib.asynccontextmanager
    async def publishing(self) -> AsyncIterator[None]:
        """Write the snapshot every `SNAPSHOT_INTERVAL` seconds while inside, and once
        more at the end, so a worker's last counts are never lost."""

        async def loop() -> None:
            while True:
                self.write()
                await asyncio.sleep(SNAPSHOT_INTERVAL)

        task = asyncio.create_task(loop(), name="wspush-shared-stats")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.write()


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
            # Imported here: the factory imports uvicorn configuration from cli.
            from wspush.cli import tune_garbage_collector
            from wspush.factory import create_app
            from wspush.logs import configure_logging

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
