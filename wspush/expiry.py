"""When each connection's token stops being valid: one heap and one loop timer for all.

A task (or a `call_at` handle) per connection would cost memory for each of thousands of
connections, and a scan of all of them every second would cost CPU. A heap keeps them
ordered by expiry, and a single `loop.call_at` waits for the earliest; a connection that
leaves before its token expires only marks its entry, and the entry leaves the heap when
it comes up (or when the heap is compacted because most of it is such entries).

Expiries are wall-clock times (a JWT's `exp` is), so a connection closes at the moment
a new connection with its token is refused. The loop's clock is monotonic; so that a
change of the wall clock can not keep a connection open for long, the timer wakes at
least every `MAX_WAIT` seconds and compares with the wall clock again.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Callable
from typing import Generic, TypeVar

logger = logging.getLogger("wspush.expiry")

MAX_WAIT = 30.0
# Compact when more than this many entries, and more than half of them, are dead.
COMPACT_AFTER = 64

T = TypeVar("T")
# [expires, sequence, item]: lists compare by expiry, then by the unique sequence
# number (never the item); `forget` sets the item to None.
Entry = list[object]


class ExpiryTimer(Generic[T]):
    """Calls `expire(item)` once the wall clock reaches the time given with `add`."""

    def __init__(self, expire: Callable[[T], None], clock: Callable[[], float] = time.time):
        self.expire = expire
        self.clock = clock
        self._heap: list[Entry] = []
        self._sequence = itertools.count()
        self._dead = 0  # forgotten entries still in the heap
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")  # the wall-clock time the timer is for

    def __len__(self) -> int:
        """Items waiting to expire."""
        return len(self._heap) - self._dead

    def add(self, expires: float, item: T) -> Entry:
        """Expire `item` at `expires` (wall clock); the entry is for `forget`."""
        entry: Entry = [expires, next(self._sequence), item]
        heapq.heappush(self._heap, entry)
        if expires < self._timer_at:
            self._schedule(expires)
        return entry

    def forget(self, entry: Entry) -> None:
        """The item left before it expired: drop it (its entry goes later)."""
        if entry[2] is None:
            return
        entry[2] = None
        self._dead += 1
        if self._dead > COMPACT_AFTER and self._dead * 2 > len(self._heap):
            self._heap = [e for e in self._heap if e[2] is not None]
            heapq.heapify(self._heap)
            self._dead = 0

    def close(self) -> None:
        """Stop the timer (the items are left as they are)."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_at = float("inf")

    def _schedule(self, expires: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        wait = min(max(expires - self.clock(), 0.0), MAX_WAIT)
        self._timer = loop.call_at(loop.time() + wait, self._fire)
        self._timer_at = expires

    def _fire(self) -> None:
        """Expire everything that is due, then wait for the next."""
        self._timer = None
        self._timer_at = float("inf")
        heap = self._heap
        now = self.clock()
        while heap and heap[0][0] <= now:  # type: ignore[operator]
            entry = heapq.heappop(heap)
            item, entry[2] = entry[2], None  # out of the heap: `forget` has nothing to do
            if item is None:
                self._dead -= 1
                continue
            try:
                self.expire(item)  # type: ignore[arg-type]
            except Exception:  # one bad item must not stop the others from expiring
                logger.exception("expiring %r failed", item)
        while heap and heap[0][2] is None:
            heapq.heappop(heap)
            self._dead -= 1
        if heap:
            self._schedule(heap[0][0])  # type: ignore[arg-type]
