"""Message history for resume after reconnect: one Redis stream per token, written in
the same atomic call that publishes the live message.

A publish with history runs one Redis Function (`wspush_publish`; on a Redis without
Functions, the same Lua through EVALSHA). In one step it appends the message to the
token's stream (trimmed to about `--history-size` entries, expiring `--history-ttl`
seconds after the last publish) and publishes it, wrapped in an envelope that carries
its id and the id before it. No relay can see the live message without it being in the
history, or the other way round.

Ids. A message's id is `<entry>.<epoch>`: the stream entry id Redis gave it
(`<ms>-<seq>`, never going backwards) and the entry id of the stream's first message
(its epoch). When the stream is gone (expired, or Redis restarted without persistence)
the next publish starts a new epoch, so an old position can never pass for a new one.
Each entry also keeps the entry id before it, so a position whose own entry was trimmed
still resumes exactly when its successor is kept, and a gap is seen as a gap.

Key and channel share a hash slot (see `history_key`), so the Function's key and the
channel it publishes to live on one shard of a Redis Cluster.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, NamedTuple

from redis.asyncio import RedisCluster
from redis.crc import key_slot
from redis.exceptions import ResponseError

LIBRARY_NAME = "wspush"
FUNCTION_NAME = "wspush_publish"
# A live message with history: ENVELOPE, its id, a space, the id before it ("-" for
# none), a newline, then the payload. A NUL byte starts it, so text messages never
# collide with it, and no id contains a space or a newline.
ENVELOPE = b"\x00wspush1 "
NO_PREVIOUS = b"-"
HISTORY_SUFFIX = b":history"
OPEN_BRACE, CLOSE_BRACE = ord("{"), ord("}")  # as ints, the cheaper `in` (see wspush.tokens)
DEFAULT_TTL = 3600  # seconds a history is kept after its last publish (--history-ttl)

_ENTRY = rb"(\d{1,20})-(\d{1,20})"
_POSITION = re.compile(_ENTRY + rb"\." + _ENTRY + rb"\.([0-9a-f]{8})")

# The body shared by the Function and the EVAL script: KEYS[1] is the history key;
# ARGV is the channel, the message, the size, the TTL in seconds, and "1" for SPUBLISH.
_LUA_BODY = """
local key = keys[1]
local channel, payload = args[1], args[2]
local size, ttl, sharded = args[3], tonumber(args[4]), args[5]
local prev, epoch = '', ''
local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
if #last > 0 then
  prev = last[1][1]
  local fields = last[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 'e' then epoch = fields[i + 1] end
  end
  if epoch == '' then epoch = prev end
end
local entry = redis.call('XADD', key, 'MAXLEN', size, '*',
  'd', payload, 'p', prev, 'e', epoch)
if epoch == '' then epoch = entry end
redis.call('EXPIRE', key, ttl)
local tag = '.' .. string.sub(redis.sha1hex(channel), 1, 8)
local id = entry .. '.' .. epoch .. tag
local previous = '-'
if prev ~= '' then previous = prev .. '.' .. epoch .. tag end
local envelope = '\\0wspush1 ' .. id .. ' ' .. previous .. '\\n' .. payload
if sharded == '1' then
  redis.call('SPUBLISH', channel, envelope)
else
  redis.call('PUBLISH', channel, envelope)
end
return id
"""

FUNCTION_LIBRARY = (
    f"#!lua name={LIBRARY_NAME}\n"
    f"local function publish(keys, args){_LUA_BODY}end\n"
    f"redis.register_function('{FUNCTION_NAME}', publish)\n"
)
EVAL_SCRIPT = f"local keys, args = KEYS, ARGV\n{_LUA_BODY}"


def history_key(channel: bytes) -> bytes:
    """The stream key of a channel's history, in the channel's own hash slot.

    A channel with no braces is wrapped whole in a hash tag (`{example.alice}:history`);
    one with a hash tag of its own keeps it (`a{b}c:history`). A channel with braces but
    no valid tag hashes whole, and gets the first short tag found in that slot.
    """
    if OPEN_BRACE not in channel and CLOSE_BRACE not in channel:
        return b"{" + channel + b"}" + HISTORY_SUFFIX
    key = channel + HISTORY_SUFFIX
    slot = key_slot(channel)
    if key_slot(key) == slot:
        return key
    tag = next(b"%d" % n for n in range(1 << 20) if key_slot(b"%d" % n) == slot)
    return b"{" + tag + b"}" + HISTORY_SUFFIX + b":" + channel


class Position(NamedTuple):
    """A message's place in its token's history: the channel's tag, the epoch, then
    the entry. Positions of one token order its messages. (A tuple: replays of a
    reconnect storm make tens of thousands.)"""

    tag: bytes
    epoch: tuple[int, int]
    entry: tuple[int, int]

    @classmethod
    def parse(cls, text: bytes | str) -> Position | None:
        """The position an id names, or None for anything that is not one."""
        raw = text.encode("latin-1", "replace") if isinstance(text, str) else text
        match = _POSITION.fullmatch(raw)
        if match is None:
            return None
        *numbers, tag = match.groups()
        ms, seq, epoch_ms, epoch_seq = (int(number) for number in numbers)
        position = cls(tag, (epoch_ms, epoch_seq), (ms, seq))
        return position if bytes(position) == raw else None  # one spelling per id

    @classmethod
    def of_entry(cls, tag: bytes, entry: bytes, epoch: bytes) -> Position:
        return cls(tag, entry_key(epoch), entry_key(entry))

    @property
    def entry_id(self) -> bytes:
        return b"%d-%d" % self.entry

    def __bytes__(self) -> bytes:
        return b"%d-%d.%d-%d.%s" % (*self.entry, *self.epoch, self.tag)

    def __str__(self) -> str:
        return bytes(self).decode()


class Envelope(NamedTuple):
    """A live message published with history (made for each one: a tuple is cheap)."""

    id: bytes
    previous: bytes | None
    payload: bytes


def open_envelope(data: bytes) -> Envelope | None:
    """The id, previous id and payload of a live message with history; None for a
    plain message (published with PUBLISH), which is delivered as it is."""
    if not data.startswith(ENVELOPE):
        return None
    head, newline, payload = data.partition(b"\n")
    if not newline:
        return None
    fields = head[len(ENVELOPE) :].split(b" ")
    if len(fields) != 2:
        return None
    message_id, previous = fields
    return Envelope(message_id, None if previous == NO_PREVIOUS else previous, payload)


def publish_arguments(
    channel: bytes, payload: bytes, size: int, ttl: int, sharded: bool
) -> tuple[list[bytes], list[bytes | int]]:
    """KEYS and ARGV of one publish with history."""
    return [history_key(channel)], [channel, payload, size, ttl, b"1" if sharded else b"0"]


def function_missing(exc: ResponseError) -> bool:
    """The error of an FCALL whose Function is not loaded (yet, or any more)."""
    return "function not found" in str(exc).lower()


def functions_unsupported(exc: ResponseError) -> bool:
    """The error of FCALL or FUNCTION on a Redis older than 7."""
    text = str(exc).lower()
    return "unknown command" in text


def reply_text(reply: Any) -> bytes:
    return reply if isinstance(reply, bytes) else str(reply).encode()


def publish_with_history(
    client: Any, channel: bytes, payload: bytes, size: int, ttl: int, sharded: bool = False
) -> bytes:
    """Record and publish one message with a redis-py client; its id.

    FCALL first; a Redis that lost the Function (a restart, a flush) gets it loaded
    again, and a Redis without Functions (before 7) runs the same Lua by EVALSHA.
    """
    keys, args = publish_arguments(channel, payload, size, ttl, sharded)
    try:
        return reply_text(client.fcall(FUNCTION_NAME, 1, *keys, *args))
    except ResponseError as exc:
        if function_missing(exc):
            client.function_load(FUNCTION_LIBRARY, replace=True)
            return reply_text(client.fcall(FUNCTION_NAME, 1, *keys, *args))
        if not functions_unsupported(exc):
            raise
    return reply_text(client.register_script(EVAL_SCRIPT)(keys, args))


async def apublish_with_history(
    client: Any, channel: bytes, payload: bytes, size: int, ttl: int, sharded: bool = False
) -> bytes:
    """`publish_with_history` for a `redis.asyncio` client."""
    keys, args = publish_arguments(channel, payload, size, ttl, sharded)
    try:
        return reply_text(await client.fcall(FUNCTION_NAME, 1, *keys, *args))
    except ResponseError as exc:
        if function_missing(exc):
            await client.function_load(FUNCTION_LIBRARY, replace=True)
            return reply_text(await client.fcall(FUNCTION_NAME, 1, *keys, *args))
        if not functions_unsupported(exc):
            raise
    return reply_text(await client.register_script(EVAL_SCRIPT)(keys, args))


async def load_function(client: Any) -> str:
    """Load the Function (or, before Redis 7, the script) so publishers find it; what
    was loaded, for the start-up log."""
    try:
        await client.function_load(FUNCTION_LIBRARY, replace=True)
        return f"function {FUNCTION_NAME}"
    except ResponseError as exc:
        if not functions_unsupported(exc):
            raise
    sha = await client.script_load(EVAL_SCRIPT)
    return f"script {reply_text(sha).decode()}"


# Why a position cannot be resumed from: older than what is kept (its epoch still is),
# or not a position of this token's history at all (garbage, another token's, from the
# future, or from a history that expired or was lost with a Redis restart).
TRIMMED = "trimmed"
UNKNOWN = "unknown"


class Replay(NamedTuple):
    """What a client resuming from a position gets before live messages.

    `current` is the token's last position (its origin when no history is kept).
    `reset` names why the position cannot be resumed from exactly; then nothing is
    replayed, and the client is told so. (A tuple: a reconnect storm makes one per
    client.)
    """

    current: Position
    entries: tuple[tuple[bytes, bytes], ...] = ()  # (id, payload), in order
    reset: str = ""


def channel_tag(channel: bytes) -> bytes:
    """The part of every id that names its channel, so another token's id is refused."""
    return hashlib.sha1(channel).hexdigest()[:8].encode()


ORIGIN = ((0, 0), (0, 0))  # the epoch and entry of `origin`


def origin(channel: bytes) -> Position:
    """The position of a client that came while its token had no history: before the
    first message of whatever epoch comes next."""
    return Position(channel_tag(channel), *ORIGIN)


def entry_key(entry: bytes) -> tuple[int, int]:
    """A stream entry id as a number pair, in the order Redis gives them."""
    ms, _, seq = entry.partition(b"-")
    return int(ms), int(seq)


def queue_reads(pipe: Any, channel: bytes, position: Position | None) -> None:
    """The reads of one replay, added to a pipeline: the newest entry, then the range
    after the position (the range is what is replayed: a publish in between only makes
    it longer; the newest entry says whether an empty range means caught up)."""
    key = history_key(channel)
    pipe.xrevrange(key, count=1)
    if position is not None:
        pipe.xrange(key, min=b"(" + position.entry_id)


def parse_position(claimed: bytes | None) -> tuple[bool, Position | None]:
    """Whether a client claimed a position, and the position (None: none, or garbage)."""
    if claimed is None or claimed == b"":
        return False, None
    return True, Position.parse(claimed)


def replay_of(
    channel: bytes, claimed: bool, position: Position | None, replies: list[Any]
) -> Replay:
    """The replay for a position from the replies of `queue_reads`."""
    newest = replies[0]
    later = replies[1] if len(replies) > 1 else []
    return replay_from(
        channel_tag(channel),
        claimed,
        position,
        (newest[0][0], epoch_of(*newest[0])) if newest else None,
        [
            field
            for entry, fields in later
            for field in (entry, epoch_of(entry, fields), fields[b"d"])
        ],
        later[0][1].get(b"p") if later else None,
    )


def epoch_of(entry: bytes, fields: dict[bytes, bytes]) -> bytes:
    """An entry's epoch: kept in each entry but the first, whose epoch is its own id."""
    return fields.get(b"e") or entry


def replay_from(
    tag: bytes,
    claimed: bool,
    position: Position | None,
    newest: tuple[bytes, bytes] | None,
    later: list[Any],
    first_previous: bytes | None,
) -> Replay:
    """The replay for a position of the channel with `tag` (see `channel_tag`), from
    what was read: the newest entry and its epoch (None: no history); the entries after
    the position, flat (entry id, epoch, payload, entry id, ...); and the id the first
    of them names as the one before it.

    One decision for both ways of reading (a script on one server, a pipeline on a
    cluster). Only what it needs is looked at: `newest` when nothing is replayed (the
    script reads it only then), `later` when the position is this token's.
    """
    if not claimed or position is None or position.tag != tag or not later:
        return nothing_after(tag, claimed, position, newest)
    last = Position.of_entry(tag, later[-3], later[-2])
    reset = why_not_resumed(position, entry_key(later[1]), first_previous)
    if reset:
        return Replay(last, reset=reset)
    dot_tag = b"." + tag
    entries = tuple(
        [
            (later[at] + b"." + later[at + 1] + dot_tag, later[at + 2])
            for at in range(0, len(later), 3)
        ]
    )
    return Replay(last, entries)


def nothing_after(
    tag: bytes, claimed: bool, position: Position | None, newest: tuple[bytes, bytes] | None
) -> Replay:
    """The replay when no entry after the position was read: its current position, and
    a reset unless the client claimed none or is caught up."""
    current = Position(tag, *ORIGIN) if newest is None else Position.of_entry(tag, *newest)
    if not claimed:
        return Replay(current)
    if position is None or position.tag != tag:
        return Replay(current, reset=UNKNOWN)
    return Replay(current, reset="" if current == position else UNKNOWN)


def why_not_resumed(
    position: Position, first_epoch: tuple[int, int], first_previous: bytes | None
) -> str:
    """'' when the first entry after a position follows it (it names the position as
    the one before, in its epoch; after the origin, it names none); else the reset."""
    if (position.epoch, position.entry) == ORIGIN:  # no history when it came: all is new
        if first_previous == b"":
            return ""
    elif first_epoch == position.epoch and first_previous == position.entry_id:
        return ""
    # Trimmed: the entry before the first one after it is younger than the position
    # (gone since); anything else names no entry of this history.
    before = first_previous or b""
    trimmed = first_epoch == position.epoch and bool(before) and entry_key(before) > position.entry
    return TRIMMED if trimmed else UNKNOWN


async def replay_since(client: Any, channel: bytes, claimed: bytes | None) -> Replay:
    """The replay for a client that claims position `claimed` (None: claims none), read
    in one round trip."""
    was_claimed, position = parse_position(claimed)
    pipe = client.pipeline(transaction=False)
    queue_reads(pipe, channel, position)
    return replay_of(channel, was_claimed, position, await pipe.execute())


# The reads of many replays in one command (one server, not a cluster, where the keys
# of one call must share a slot). KEYS are the history keys; ARGV[1] is, for each key,
# the entry id after which its entries are wanted ('' for none), joined with ','. One
# flat reply, per key: -1 (no history); 0, then the newest entry's id and epoch
# (nothing after the position); or the count of entries after it, the id its first
# names as the one before (false: none kept), then id, epoch and payload of each.
# Flat and without field names, so the relay parses a few strings per replay, not
# nested arrays.
READ_SCRIPT = """
local function fields_of(entry)
  local fields, epoch, previous, payload = entry[2], '', false, false
  for j = 1, #fields, 2 do
    local name = fields[j]
    if name == 'e' then epoch = fields[j + 1]
    elseif name == 'p' then previous = fields[j + 1]
    elseif name == 'd' then payload = fields[j + 1] end
  end
  if epoch == '' then epoch = entry[1] end
  return epoch, previous, payload
end
local out, n, wanted, at = {}, 0, ARGV[1], 1
for _, key in ipairs(KEYS) do
  local comma = string.find(wanted, ',', at, true)
  local stop = comma and comma - 1 or #wanted
  local after = string.sub(wanted, at, stop)
  at = stop + 2
  local later = {}
  if after ~= '' then later = redis.call('XRANGE', key, '(' .. after, '+') end
  if #later > 0 then
    local _, previous = fields_of(later[1])
    out[n + 1], out[n + 2] = #later, previous
    n = n + 2
    for _, entry in ipairs(later) do
      local epoch, _, payload = fields_of(entry)
      out[n + 1], out[n + 2], out[n + 3] = entry[1], epoch, payload
      n = n + 3
    end
  else
    local newest = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
    if #newest == 0 then
      out[n + 1] = -1
      n = n + 1
    else
      out[n + 1], out[n + 2], out[n + 3] = 0, newest[1][1], (fields_of(newest[1]))
      n = n + 3
    end
  end
end
return out
"""


def script_replays(
    batch: list[tuple[bytes, bool, Position | None]], tags: list[bytes], reply: list[Any]
) -> list[Replay]:
    """The replay of each (channel, claimed, position) from `READ_SCRIPT`'s reply;
    `tags`: the channels' tags."""
    replays: list[Replay] = []
    at = 0
    for (_, claimed, position), tag in zip(batch, tags, strict=True):
        count = reply[at]
        if count < 0:
            replays.append(replay_from(tag, claimed, position, None, [], None))
            at += 1
        elif count == 0:
            newest = (reply[at + 1], reply[at + 2])
            replays.append(replay_from(tag, claimed, position, newest, [], None))
            at += 3
        else:
            end = at + 2 + 3 * count
            later = reply[at + 2 : end]
            replays.append(replay_from(tag, claimed, position, None, later, reply[at + 1]))
            at = end
    return replays


def wanted_after(tag: bytes, position: Position | None) -> bytes:
    """What `READ_SCRIPT` reads for a position: the entries after it, when it is one of
    the channel's with `tag` ('' when not: then only the newest entry matters)."""
    if position is None or position.tag != tag:
        return b""
    return position.entry_id


async def read_replays(
    client: Any, requests: list[tuple[bytes, bytes | None]], batch_size: int = 1000
) -> list[Replay]:
    """The replay of each (channel, claimed position), `batch_size` at a time.

    After a deploy or a network blip every client comes back at once; their reads go
    out together, so ten thousand resumes cost a few round trips, not ten thousand: on
    one server a script call per batch, on a cluster a pipeline (two reads a replay).
    """
    cluster = isinstance(client, RedisCluster)
    replays: list[Replay] = []
    for start in range(0, len(requests), batch_size):
        batch = [
            (channel, *parse_position(claimed))
            for channel, claimed in requests[start : start + batch_size]
        ]
        if cluster:
            replays += await pipelined_replays(client, batch)
            continue
        keys = [history_key(channel) for channel, _, _ in batch]
        tags = [channel_tag(channel) for channel, _, _ in batch]
        wanted = b",".join(
            [wanted_after(tag, position) for (_, _, position), tag in zip(batch, tags, strict=True)]
        )
        reply = await client.register_script(READ_SCRIPT)(keys, [wanted])
        replays += script_replays(batch, tags, reply)
    return replays


async def pipelined_replays(
    client: Any, batch: list[tuple[bytes, bool, Position | None]]
) -> list[Replay]:
    """`read_replays` on a cluster: the reads of `queue_reads`, in one pipeline."""
    pipe = client.pipeline(transaction=False)
    for channel, _, position in batch:
        queue_reads(pipe, channel, position)
    flat = await pipe.execute()
    replays, at = [], 0
    for channel, claimed, position in batch:
        count = 1 if position is None else 2
        replays.append(replay_of(channel, claimed, position, flat[at : at + count]))
        at += count
    return replays
