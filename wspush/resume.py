"""Resume after reconnect: every connection kept in sequence with its token's history.

With `--history-size`, each message published with history carries its id and the id
before it (see `wspush.history`). A connection knows the id of the last message it was
given (its position), so the hub can tell, per message, whether it follows:

- it follows: delivered as usual;
- it is older than the position: a duplicate (a message that was in the replay and
  also arrives live), dropped;
- it is newer but does not follow: a gap, so the connection is *repaired*.

A repair holds the connection's live messages with ids, reads what follows its
position from Redis (`HistoryReader`, batched across connections), hands the drain the
replayed messages and then the held ones that follow them, and lets live messages flow
again. If a held message still does not follow (it came after a gap in the hold, or the
hold was full), it reads again from the new position.

The same repair serves every case: a client connecting with `Last-Event-ID` (its
position is the one it names), a client connecting without one (it learns the current
position), a relay whose own subscription dropped and came back (every connection is
repaired from its position, so what was published meanwhile arrives before anything
newer), and a gap on the live path (messages the relay shed in a flood). A position that
cannot be resumed from exactly (too old, unknown, another token's, from before a Redis
restart) gives the client a reset signal instead, and live messages after it.

The hand-over is exact because Redis runs each publish (append and PUBLISH) atomically
and the connection is registered in the hub before its history is read: a message is
either in what the read returns, or arrives live after the connection was registered,
or both (then the position check drops the second copy).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from redis.exceptions import RedisError

from wspush.history import Position, Replay, origin, read_replays
from wspush.hub import Message, Subscription
from wspush.stats import Stats
from wspush.wire import meta_frame_payload

logger = logging.getLogger("wspush.resume")

RETRY_SECONDS = 1.0  # between history reads while Redis does not answer
GATHER_SECONDS = 0.002  # the longest a read waits for more repairs to join it
GATHER_MAX = 1000  # repairs that make a read go at once
RESET_EVENT = b"wspush-reset"
POSITION_EVENT = b"wspush-position"


def position_signal(token: bytes, position: bytes) -> Message:
    """The client's position, for a client that connected without one: an SSE event
    with only an id (EventSource updates its last id, fires nothing)."""
    return Message.signal(
        token, b"id:" + position + b"\n\n", meta_frame_payload(b"", position, POSITION_EVENT)
    )


def reset_signal(token: bytes, position: bytes, reason: str) -> Message:
    """The position could not be resumed from: the client's state may miss messages.
    Its id is the current position, so the client resumes from there next time."""
    why = reason.encode()
    return Message.signal(
        token,
        b"event:" + RESET_EVENT + b"\nid:" + position + b"\ndata:" + why + b"\n\n",
        meta_frame_payload(why, position, RESET_EVENT),
    )


class Repair(NamedTuple):
    """A connection waiting for its history: from `position`; `announce`: tell it the
    current position if nothing is replayed (it claimed none)."""

    subscription: Subscription
    position: bytes | None
    announce: bool


class Resumer:
    """Keeps the connections of one hub in sequence with their tokens' histories.

    Repairs are queued, and one worker reads the histories of everything queued in one
    go (`read_replays`): a connection costs no task of its own, and a reconnect storm a
    few round trips to Redis.
    """

    def __init__(
        self,
        client: Any,
        prefix: bytes,
        stats: Stats,
        hold: int,
        wait_subscribed: Callable[[bytes], Awaitable[None]],
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.stats = stats
        self.hold = hold  # live messages held per connection during a repair, at most
        # In exact subscribe mode, history is read once Redis confirmed the channel:
        # what is published after the read must reach this relay live.
        self.wait_subscribed = wait_subscribed
        # Counts the subscriber's (re)subscriptions: while it is unchanged since a
        # connection's last message, nothing published can have been missed.
        self.generation = 0
        self._pending: list[Repair] = []
        self._worker: asyncio.Task[None] | None = None

    def start(self, subscription: Subscription, claimed: bytes | None, signals: bool) -> None:
        """Bring a new connection in sequence: from the position it claims (the SSE
        `Last-Event-ID`, or `?last_event_id=`), or, claiming none, from now on, telling
        it the current position when its framing can (`signals`)."""
        subscription.history = self
        subscription.signals = signals
        subscription.generation = self.generation
        self._repair(subscription, claimed or None, announce=not claimed)

    def resubscribed(self, subscriptions: list[Subscription]) -> None:
        """The subscription to Redis is new: anything may have been published while it
        was not there, so every connection in sequence is repaired from its position."""
        self.generation += 1
        for subscription in subscriptions:
            if subscription.history is self and subscription.held is None:
                self._repair(subscription, subscription.position, announce=False)

    def in_sequence(self, subscription: Subscription, message: Message) -> bool:
        """Whether a live message with an id goes to the connection now (the hub's hot
        path, for messages published with history)."""
        held = subscription.held
        if held is not None:  # a repair is reading history: after it
            if len(held) < self.hold:
                held.append(message)
            return False
        if self.follows(subscription, subscription.position, message):
            subscription.position = message.id
            return True
        if is_duplicate(subscription.position, message):
            self.stats.resume_duplicates_dropped += 1
            return False
        self.stats.resume_gaps_repaired += 1
        self._repair(subscription, subscription.position, announce=False)
        subscription.held = [message]
        return False

    def follows(self, subscription: Subscription, position: bytes | None, message: Message) -> bool:
        """A message follows a position when it names it as the one before, or when it
        starts a new history (none before it) and nothing can have been missed since the
        connection's last message (the subscription to Redis has stayed up)."""
        if message.previous == position:
            return True
        return (
            message.previous is None
            and subscription.generation == self.generation
            and not is_duplicate(position, message)  # the start of the history it is at
        )

    def _repair(self, subscription: Subscription, position: bytes | None, announce: bool) -> None:
        subscription.held = []
        self._pending.append(Repair(subscription, position, announce))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._work())

    async def _work(self) -> None:
        """Read and hand over everything queued, in batches, until nothing is left."""
        while self._pending:
            await self._gather()
            batch = [repair for repair in self._pending if repair.subscription.history is self]
            self._pending = []
            if not batch:
                continue
            for token in {repair.subscription.token for repair in batch}:
                await self.wait_subscribed(token)  # at once, but in exact mode
            generation = self.generation
            requests = [(self.prefix + r.subscription.token, r.position) for r in batch]
            try:
                replays = await read_replays(self.client, requests)
            except (RedisError, OSError) as exc:
                logger.debug("history reads failed (%s); again in %gs", exc, RETRY_SECONDS)
                self._pending = batch + self._pending
                await asyncio.sleep(RETRY_SECONDS)
                continue
            for repair, replay in zip(batch, replays, strict=True):
                self._finish(repair, replay, generation)

    async def _gather(self) -> None:
        """Let the connections of a storm join the read: a read costs the same whether
        it carries one repair or a hundred. A lone reconnect waits one loop iteration;
        when more came during it, the read waits `GATHER_SECONDS` (asleep, so the loop
        takes in the rest meanwhile)."""
        count = len(self._pending)
        if count >= GATHER_MAX:
            return
        await asyncio.sleep(0)
        if count < len(self._pending) < GATHER_MAX:
            await asyncio.sleep(GATHER_SECONDS)

    def _finish(self, repair: Repair, replay: Replay, generation: int) -> None:
        subscription = repair.subscription
        if subscription.history is not self:
            return  # the client left meanwhile
        position, complete = self._hand_over(subscription, replay, repair.announce)
        if complete and generation == self.generation:
            subscription.held = None  # in sequence: live messages flow again
            subscription.generation = generation
        else:
            self._pending.append(Repair(subscription, position, False))

    def _hand_over(
        self, subscription: Subscription, replay: Replay, announce: bool
    ) -> tuple[bytes, bool]:
        """Give the drain the replay and the held messages that follow it; the new
        position, and whether everything held could be handed over."""
        token = subscription.token
        now = time.monotonic()
        current = bytes(replay.current)
        messages: list[Message] = []
        if replay.reset:
            self.stats.resume_resets += 1
            logger.debug("token %r: cannot resume (%s)", token, replay.reset)
            if subscription.signals:
                messages.append(reset_signal(token, current, replay.reset))
        elif replay.entries:
            self.stats.resume_replayed += len(replay.entries)
            messages += [Message(token, payload, now, at) for at, payload in replay.entries]
        position = current
        held, subscription.held = subscription.held or [], []
        if announce and not replay.entries:
            # A new connection that claimed no position: everything held came after it
            # joined, so its position is the one before the first of them (what the
            # read returned is newer). Nothing was replayed, so none is a duplicate.
            if held:
                position = held[0].previous or bytes(origin(self.prefix + token))
            if subscription.signals:
                messages.append(position_signal(token, position))
        complete = len(held) < self.hold  # a full hold dropped messages: read again
        for message in held:
            if self.follows(subscription, position, message):
                messages.append(message)
                position = message.id  # type: ignore[assignment]
            elif not is_duplicate(position, message):
                complete = False  # a gap in the hold: the next read fills it
                break
        subscription.position = position
        subscription.give(messages)
        return position, complete

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker


def is_duplicate(position: bytes | None, message: Message) -> bool:
    """A message at or before the position (of the same token and history)."""
    at = message.position
    if position is None or at is None:
        return False
    mine = Position.parse(position)
    return mine is not None and at.tag == mine.tag and at.epoch == mine.epoch and at <= mine
