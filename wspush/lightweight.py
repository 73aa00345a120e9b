"""`asyncio.Event` and `asyncio.Queue` stand-ins that allocate nothing until used.

An idle connection still owns a handful of events and queues (uvicorn's receive queue
and flow-control events, the hub's backlog queue), but almost never waits on them with
anything queued. The asyncio classes each allocate a `collections.deque` up front, and a
deque costs 760 bytes even when empty: an `asyncio.Queue` holds four of them, about
3 KB. These classes keep their waiters and items in containers created on first use and
dropped once empty, so an idle connection pays for a few slots instead.

They implement the part of the asyncio interface that wspush and uvicorn's protocols use,
with the same semantics: an event wakes every waiter; a queue is FIFO, wakes one getter
per item, and `put_nowait` raises `asyncio.QueueFull` past `maxsize` (0: unbounded).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


def _wake_one(waiters: list[asyncio.Future[None]]) -> None:
    """Wake the first waiter that is still waiting, and forget it."""
    while waiters:
        waiter = waiters.pop(0)
        if not waiter.done():
            waiter.set_result(None)
            return


class LightEvent:
    """An `asyncio.Event` whose waiter list exists only while someone waits."""

    __slots__ = ("_value", "_waiters")

    def __init__(self, value: bool = False) -> None:
        self._value = value
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if self._value:
            return
        self._value = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> bool:
        if self._value:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = [waiter]
        else:
            self._waiters.append(waiter)
        try:
            await waiter
            return True
        finally:
            waiters = self._waiters
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    self._waiters = None


class LightQueue(Generic[T]):
    """A FIFO `asyncio.Queue` for non-blocking producers (there is no `put()`)."""

    __slots__ = ("_getters", "_items", "maxsize")

    def __init__(self, maxsize: int = 0) -> None:
        self.maxsize = maxsize
        self._items: deque[T] | None = None
        self._getters: list[asyncio.Future[None]] | None = None

    def qsize(self) -> int:
        return 0 if self._items is None else len(self._items)

    def empty(self) -> bool:
        return not self._items

    def full(self) -> bool:
        return 0 < self.maxsize <= self.qsize()

    def put_nowait(self, item: T) -> None:
        if self.full():
            raise asyncio.QueueFull
        if self._items is None:
            self._items = deque()
        self._items.append(item)
        if self._getters:
            _wake_one(self._getters)

    def get_nowait(self) -> T:
        items = self._items
        if not items:
            raise asyncio.QueueEmpty
        item = items.popleft()
        if not items:
            self._items = None
        return item

    async def get(self) -> T:
        while not self._items:
            getter = asyncio.get_running_loop().create_future()
            if self._getters is None:
                self._getters = [getter]
            else:
                self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()
                getters = self._getters
                if getters is not None and getter in getters:
                    getters.remove(getter)
                elif self._items and getters:
                    # Woken, then cancelled before taking the item: pass the turn on.
                    _wake_one(getters)
                raise
            finally:
                if self._getters is not None and not self._getters:
                    self._getters = None
        return self.get_nowait()
