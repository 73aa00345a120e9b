"""Reading the subscription as fast as Redis sends it, and shedding what cannot be
delivered in time.

Redis holds what a subscriber has not read yet in an output buffer, and cuts the
subscriber off when that buffer passes its limit (by default 32 MB at once, or 8 MB for
60 s). So the relay's first duty during a publish flood is to keep reading: a message
that cannot be delivered in time is better dropped here, and counted, than left in
Redis until Redis drops the whole subscription.

`ReplyReader` parses every complete reply of each socket read in one go with hiredis
(redis-py reads one reply per awaited call, which costs more than the parse itself).
`FloodGate` decides, per read, how much of it to deliver: all of it while the relay
keeps up, and while it is behind, fewer and fewer of the newest messages until it is not.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

# A read this large means the transport stopped for a full buffer: the relay is behind.
# (asyncio's StreamReader pauses its transport at twice its 64 KiB limit.)
BEHIND_BYTES = 64 * 1024
# Behind for this long is a flood, not a burst: Redis's buffer for the subscription is
# growing by as much as the publishers send beyond what the relay reads, and at 100 MB/s
# the default 32 MB limit is a third of a second away. A shorter burst (a few MB) is
# delivered whole.
FLOOD_AFTER = 0.1
READ_SIZE = 1024 * 1024
# While behind, deliver every FLOOD_TICK seconds, at least this many newest messages.
FLOOD_TICK = 0.01
MIN_ALLOWANCE = 16


class ReplyReader:
    """Whole socket reads from a connected redis-py connection, parsed with hiredis.

    It takes over the connection's own hiredis reader and stream (so nothing already
    buffered is lost) once redis-py has done the connecting, authenticating and
    subscribing. `usable()` says whether this redis-py has the hiredis parser this needs;
    without it the subscriber reads one reply at a time through redis-py.
    """

    def __init__(self, connection: Any) -> None:
        parser = connection._parser
        self._reader = parser._reader
        self._stream = parser._stream
        # What the reader returns when no whole reply is buffered: redis-py configures
        # its own sentinel (hiredis's default is False).
        self._nothing = getattr(sys.modules[type(parser).__module__], "NOT_ENOUGH_DATA", False)
        self.last_read = 0  # bytes in the most recent socket read
        self.behind_since: float | None = None  # start of the current run of full reads

    @staticmethod
    def usable(connection: Any) -> bool:
        parser = getattr(connection, "_parser", None)
        reader = getattr(parser, "_reader", None)
        stream = getattr(parser, "_stream", None)
        return callable(getattr(reader, "gets", None)) and callable(getattr(stream, "read", None))

    async def replies(self) -> list[Any]:
        """Every complete reply available, waiting for at least one."""
        gets, nothing = self._reader.gets, self._nothing
        reply = gets()
        self.last_read = 0
        while reply is nothing:
            data = await self._stream.read(READ_SIZE)
            if not data:
                raise ConnectionError("Redis closed the connection")
            self.last_read = len(data)
            self._reader.feed(data)
            reply = gets()
        replies = [reply]
        reply = gets()
        while reply is not nothing:
            replies.append(reply)
            reply = gets()
        return replies

    @property
    def behind(self) -> bool:
        """Every read has been full for `FLOOD_AFTER` seconds: shed, or be cut off."""
        if self.last_read < BEHIND_BYTES:
            if self.last_read:
                self.behind_since = None
            return False
        now = time.monotonic()
        if self.behind_since is None:
            self.behind_since = now
        return now - self.behind_since >= FLOOD_AFTER


class FloodGate:
    """How many of each read's messages to deliver.

    All of them while the relay keeps up. While it is behind, every write to a client
    is time taken from reading, so it delivers at most every `FLOOD_TICK` seconds, and
    then only the newest `allowance` messages of the read, halved for every delivery
    that still finds it behind. The rest are shed, oldest first.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.allowance: int | None = None  # None: deliver everything
        self.delivered_at = 0.0

    def first_to_deliver(self, count: int, behind: bool) -> int:
        """Index of the first of `count` messages to deliver (0: all; `count`: none)."""
        if not behind:
            self.allowance = None
            return 0
        now = self.clock()
        if now - self.delivered_at < FLOOD_TICK:
            return count
        self.delivered_at = now
        previous = count if self.allowance is None else self.allowance
        self.allowance = max(MIN_ALLOWANCE, previous // 2)
        return max(0, count - self.allowance)
