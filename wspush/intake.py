"""Reading the subscription as fast as Redis sends it, and shedding what cannot be
delivered in time.

Redis holds what a subscriber has not read yet in an output buffer, and cuts the
subscriber off when that buffer passes its limit (by default 32 MB at once, or 8 MB for
60 s). So the relay's first duty during a publish flood is to keep reading: a message
that cannot be delivered in time is better dropped here, and counted, than left in
Redis until Redis drops the whole subscription.

`ReplyIntake` reads the subscription in the event loop's callback and parses every
complete reply of each socket read in one go with hiredis (redis-py reads one reply per
awaited call, through a stream and a task, which costs more than the parse itself).
`FloodGate` decides, per read, how much of it to deliver: all of it while the relay
keeps up, and while it is behind, fewer and fewer of the newest messages until it is not.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import sys
import termios
import time
from collections.abc import Callable
from typing import Any

# Redis's data waiting in this process (socket receive queue and stream buffer) that
# means the relay is not keeping up...
BEHIND_BYTES = 256 * 1024
# ...and for how long, to be a flood rather than a burst: Redis's buffer for the
# subscription is then growing by what the publishers send beyond what the relay
# reads, and at 100 MB/s the default 32 MB limit is a third of a second away. A shorter
# burst is delivered whole.
FLOOD_AFTER = 0.1
# This much waiting is a flood at once: the kernel's receive buffer is filling, and
# once it is full, every byte more waits in Redis's output buffer for this subscriber.
FLOOD_BYTES = 1024 * 1024
# A read smaller than this means Redis had little more waiting when it was taken (the
# event loop reads a socket up to 256 KB at a time): the relay is keeping up, and no
# system call is needed to say so. After a larger read, what is waiting is measured.
SMALL_READ = 32 * 1024
# While behind, deliver every FLOOD_TICK seconds, at least this many newest messages.
FLOOD_TICK = 0.01
MIN_ALLOWANCE = 16


class ReplyIntake(asyncio.Protocol):
    """The subscription's connection, read in the event loop's own callback and parsed
    with hiredis, every complete reply of each socket read handed over at once.

    redis-py reads a connection through an asyncio stream: each read feeds a buffer,
    wakes the reading task through a future, and copies the bytes out again, which for
    a relay that gets a few messages per read costs more than the messages. Once
    redis-py has connected, authenticated and subscribed, `start` puts this protocol on
    the connection's transport: what arrives is fed to the connection's own hiredis
    reader (so nothing already buffered is lost) and `handle` gets the replies, in the
    callback. The stream's protocol still learns what it must for redis-py to close the
    connection and to write commands on it (flow control, the end of the connection).
    `usable()` says whether this redis-py has the hiredis parser this needs; without it
    the subscriber reads one reply at a time through redis-py.
    """

    def __init__(self, connection: Any, handle: Callable[[list[Any]], None]) -> None:
        parser = connection._parser
        self._reader = parser._reader
        self._stream = parser._stream
        self._transport: asyncio.Transport = self._stream._transport
        self._stream_protocol: asyncio.Protocol = self._transport.get_protocol()
        # What the reader returns when no whole reply is buffered: redis-py configures
        # its own sentinel (hiredis's default is False).
        self._nothing = getattr(sys.modules[type(parser).__module__], "NOT_ENOUGH_DATA", False)
        self._handle: Callable[[list[Any]], None] | None = handle
        self._closed: asyncio.Future[None] | None = None
        self.behind_since: float | None = None  # since when data has been piling up
        self.waiting = 0  # bytes from Redis received but unread, at the last read
        self.flooded = False  # behind, and until caught up
        sock = self._transport.get_extra_info("socket")
        self._fd = sock.fileno() if sock is not None else -1

    @staticmethod
    def usable(connection: Any) -> bool:
        parser = getattr(connection, "_parser", None)
        reader = getattr(parser, "_reader", None)
        stream = getattr(parser, "_stream", None)
        transport = getattr(stream, "_transport", None)
        return (
            callable(getattr(reader, "gets", None))
            and callable(getattr(reader, "feed", None))
            and isinstance(getattr(stream, "_buffer", None), bytearray)
            and callable(getattr(transport, "set_protocol", None))
            and callable(getattr(transport, "get_protocol", None))
        )

    def start(self) -> None:
        """Take the connection over: what the stream had buffered first, then every read."""
        self._closed = asyncio.get_running_loop().create_future()
        buffered = bytes(self._stream._buffer)
        self._stream._buffer.clear()
        self._transport.set_protocol(self)
        if getattr(self._stream, "_paused", False):  # the stream had paused reading
            self._stream._paused = False
            self._transport.resume_reading()
        if self._transport.is_closing():
            self.connection_lost(None)
        elif buffered:
            self.data_received(buffered)
        else:
            self._deliver()  # what redis-py's parser had already read

    async def closed(self) -> None:
        """Wait for the end of the connection: raises why it ended."""
        assert self._closed is not None, "start() first"
        await self._closed

    def stop(self) -> None:
        """Hand nothing more over (the relay is done with this connection)."""
        self._handle = None

    # -- asyncio ----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        try:
            self._reader.feed(data)
            self._deliver()
            # After a small read there was little more waiting (see SMALL_READ).
            self._note_backlog(self._waiting() if len(data) >= SMALL_READ else 0)
        except Exception as exc:  # a reply hiredis cannot parse, or a failure handling it
            self._end(exc)
            self._transport.abort()

    def eof_received(self) -> bool | None:
        self._end(ConnectionError("Redis closed the connection"))
        return self._stream_protocol.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(exc or ConnectionError("Redis closed the connection"))
        self._stream_protocol.connection_lost(exc)  # redis-py's close waits for this

    def pause_writing(self) -> None:
        self._stream_protocol.pause_writing()

    def resume_writing(self) -> None:
        self._stream_protocol.resume_writing()

    # -- replies --------------------------------------------------------------------------

    def _deliver(self) -> None:
        gets, nothing = self._reader.gets, self._nothing
        reply = gets()
        if reply is nothing:
            return
        replies = [reply]
        reply = gets()
        while reply is not nothing:
            replies.append(reply)
            reply = gets()
        if self._handle is not None:
            self._handle(replies)

    def _end(self, exc: BaseException) -> None:
        self._handle = None
        closed = self._closed
        if closed is not None and not closed.done():
            closed.set_exception(exc)

    def _waiting(self) -> int:
        """Bytes from Redis received but not read yet (in the socket)."""
        pending = array.array("i", [0])
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                fcntl.ioctl(self._fd, termios.FIONREAD, pending)
        return pending[0]

    def _note_backlog(self, waiting: int) -> None:
        self.waiting = waiting
        if waiting < BEHIND_BYTES:
            self.behind_since = None
        elif self.behind_since is None:
            self.behind_since = time.monotonic()

    @property
    def behind(self) -> bool:
        """Data has piled up for `FLOOD_AFTER` seconds, or past `FLOOD_BYTES`: shed, or
        be cut off. It stays so until the data waiting is back under `BEHIND_BYTES`."""
        since = self.behind_since
        if since is None:
            self.flooded = False
        elif not self.flooded:
            self.flooded = self.waiting >= FLOOD_BYTES or time.monotonic() - since >= FLOOD_AFTER
        return self.flooded


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
