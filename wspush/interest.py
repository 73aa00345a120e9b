"""Interest-based subscription: which tokens this process has clients for, and which of
them each Redis connection has subscribed.

In `exact` subscribe mode wspush subscribes `<prefix><token>` only while a local client
of that token is connected. Two sets are reconciled:

- the desired set, `Interest.wanted`, changed by the hub when the first client of a
  token arrives and when the last one leaves;
- per Redis connection, what has been asked of Redis (`Link.sent`) and which channels
  still have a command in flight (`Link.pending`).

Changes are collected and sent as one SUBSCRIBE and one UNSUBSCRIBE with many channels
(see `Link.plan`), so a busy server makes one round trip per batch, never one per
connection. Decisions are taken against `sent`, the state Redis reaches once it has
processed every command written so far: Redis handles one connection's commands in
order, so a SUBSCRIBE written after an UNSUBSCRIBE of the same channel wins, however
the two cross on the wire.

A token counts as *confirmed* when its connection has it in `sent` and no command for
it is in flight: the last reply Redis sent for it was the `subscribe` that followed
every earlier command. From then on Redis delivers every message published to the
channel. Endpoints wait (with a timeout) for that before they report the connection
open, so a client never misses a message published after its connection is open,
unless Redis itself goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable


class Interest:
    """The desired set of one app, and the waiters for its confirmations."""

    def __init__(self) -> None:
        self.wanted: set[bytes] = set()
        # The connection that carries a token's channel now (None: not connected).
        self.route: Callable[[bytes], Link | None] = lambda token: None
        self._confirmations: dict[bytes, asyncio.Event] = {}

    def first_client(self, token: bytes) -> None:
        """Called by the hub when the first local client of `token` arrives."""
        self.wanted.add(token)
        link = self.route(token)
        if link is not None:
            link.mark(token)

    def last_client(self, token: bytes) -> None:
        """Called by the hub when the last local client of `token` leaves."""
        self.wanted.discard(token)
        event = self._confirmations.pop(token, None)
        if event is not None:
            event.set()  # nobody waits any more: release the entry
        link = self.route(token)
        if link is not None:
            link.mark(token)

    def is_confirmed(self, token: bytes) -> bool:
        link = self.route(token)
        return link is not None and link.is_confirmed(token)

    async def wait_confirmed(self, token: bytes, within: float) -> bool:
        """Wait until Redis has confirmed the subscription of `token`; False on timeout."""
        if self.is_confirmed(token):
            return True
        event = self._confirmations.setdefault(token, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await event.wait()
        return self.is_confirmed(token)

    def confirmed(self, token: bytes) -> None:
        """A link saw its subscription of `token` confirmed: wake whoever waits for it."""
        event = self._confirmations.pop(token, None)
        if event is not None:
            event.set()


class Link:
    """What one Redis connection has asked for, reconciled with the desired set in batches.

    A link lives as long as its connection: after a reconnect a new link starts with
    nothing sent and every wanted token it owns marked, so the whole current set is
    subscribed again.
    """

    def __init__(self, interest: Interest, owns: Callable[[bytes], bool] | None = None) -> None:
        self.interest = interest
        self.owns = owns  # which tokens this connection carries (None: all)
        self.sent: set[bytes] = set()  # subscribed once Redis processes what was written
        self.pending: dict[bytes, int] = {}  # commands written, replies not yet read
        self.wake = asyncio.Event()
        self.dirty: set[bytes] = {t for t in interest.wanted if owns is None or owns(t)}
        if self.dirty:
            self.wake.set()

    def mark(self, token: bytes) -> None:
        """The desired state of `token` may have changed: look at it in the next batch."""
        self.dirty.add(token)
        self.wake.set()

    def is_confirmed(self, token: bytes) -> bool:
        return token in self.sent and token not in self.pending

    def plan(self) -> tuple[list[bytes], list[bytes]]:
        """The tokens to subscribe and to unsubscribe now; counts them as sent.

        A token that came and went within one batch needs no command at all.
        """
        dirty, self.dirty = self.dirty, set()
        self.wake.clear()
        wanted, sent, pending = self.interest.wanted, self.sent, self.pending
        subscribe = [t for t in dirty if t in wanted and t not in sent]
        unsubscribe = [t for t in dirty if t not in wanted and t in sent]
        sent.update(subscribe)
        sent.difference_update(unsubscribe)
        for token in subscribe + unsubscribe:
            pending[token] = pending.get(token, 0) + 1
        return subscribe, unsubscribe

    def replied(self, token: bytes, subscribed: bool) -> bool:
        """Redis confirmed one (un)subscription of `token`; False when it was unasked.

        A reply with no command in flight is Redis dropping the channel by itself (a
        cluster node sends `sunsubscribe` when the channel's slot moves away): forget
        it. On a single server, subscribe again if it is still wanted; on a cluster
        node, the slot is elsewhere now, and the link of its new owner will.
        """
        count = self.pending.get(token, 0)
        if count == 0:
            if not subscribed:
                self.sent.discard(token)
                if self.owns is None and token in self.interest.wanted:
                    self.mark(token)
            return False
        if count > 1:
            self.pending[token] = count - 1
            return True
        del self.pending[token]
        if token in self.sent:
            self.interest.confirmed(token)
        return True
