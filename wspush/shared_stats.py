"""The figures of several worker processes (`wspush --workers N`), summed.

Each worker writes a snapshot of its counters to a directory shared with the
others every `SNAPSHOT_INTERVAL` seconds, and whichever worker answers a scrape
(`/metrics`, `/debug/vars`) sums them: running totals of every worker that ever ran,
levels (open connections, subscription up) of the live ones. So a scrape sees the whole
instance, at most `SNAPSHOT_INTERVAL` old for the other workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

from wspush.metrics import Snapshot, SnapshotSource

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
