"""Resume after reconnect: a client that comes back with the id of the last message it
got receives what it missed, in order, then the live messages, with no gap and no
duplicate; a position that cannot be resumed is told so with a reset, never a refusal."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections.abc import Callable

import pytest
import redis

import wspush
from tests.clients import SSEClient, receive, websocket
from tests.conftest import RedisServer, Wspush
from wspush import history

pytestmark = pytest.mark.anyio

SIZE = 50
META = "wspush.v1"  # the WebSocket subprotocol that carries ids and resets


@pytest.fixture
def resumable(spawn: Callable[..., Wspush], fresh_redis: RedisServer) -> Wspush:
    return spawn("-redis", fresh_redis.address, "--history-size", str(SIZE))


def publish(server: RedisServer, token: str, message: str, size: int = SIZE) -> str:
    with server.client() as client:
        result = history.publish_with_history(
            client, b"example." + token.encode(), message.encode(), size, 3600
        )
    return result.decode()


def parse_events(body: bytes) -> list[dict[str, str]]:
    """Complete events as EventSource sees them: type, id (when the event has one) and data."""
    events = []
    for block in body.replace(b"\r\n", b"\n").split(b"\n\n")[:-1]:
        event: dict[str, str] = {}
        data: list[str] = []
        for line in block.decode().split("\n"):
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            elif name in ("id", "event"):
                event[name] = value
        if data:
            event["data"] = "\n".join(data)
        if event:
            events.append(event)
    return events


async def sse_until(client: SSEClient, count: int, timeout: float = 5.0) -> list[dict[str, str]]:
    """Wait until `count` events with data have arrived; all events so far."""
    async with asyncio.timeout(timeout):
        while sum("data" in e for e in parse_events(bytes(client.body))) < count:
            await client.wait_for(b"\n\n", timeout)
            await asyncio.sleep(0.01)
    return parse_events(bytes(client.body))


def messages(events: list[dict[str, str]]) -> list[str]:
    return [e["data"] for e in events if "data" in e and "event" not in e]


async def test_a_fresh_sse_client_learns_the_current_position_at_once(
    resumable: Wspush, fresh_redis: RedisServer, token: str
) -> None:
    last = [publish(fresh_redis, token, f"m{n}") for n in range(3)][-1]
    async with SSEClient(f"{resumable.url}/sse?token={token}") as client:
        await client.wait_for(b"\n\n")
        assert parse_events(bytes(client.body))[0] == {"id": last}


async def test_an_empty_history_still_gives_a_position_to_resume_from(
    resumable: Wspush, fresh_redis: RedisServer, token: str
) -> None:
    async with SSEClient(f"{resumable.url}/sse?token={token}") as client:
        await client.wait_for(b"\n\n")
        origin = parse_events(bytes(client.body))[0]["id"]
    published = [publish(fresh_redis, token, f"m{n}") for n in range(2)]
    headers = {"Last-Event-ID": origin}
    async with SSEClient(f"{resumable.url}/sse?token={token}", headers) as client:
        events = await sse_until(client, 2)
    assert messages(events) == ["m0", "m1"]
    assert [e["id"] for e in events if "data" in e] == published


async def test_live_messages_carry_their_id_and_plain_publishes_none(
    resumable: Wspush, fresh_redis: RedisServer, token: str
) -> None:
    async with SSEClient(f"{resumable.url}/sse?token={token}") as client:
        await client.wait_for(b"\n\n")
        message_id = publish(fresh_redis, token, "with id")
        fresh_redis.publish(f"example.{token}", "plain")
        events = await sse_until(client, 2)
    assert events[1:] == [{"id": message_id, "data": "with id"}, {"data": "plain"}]


async def test_last_event_id_replays_what_was_missed_then_goes_live(
    resumable: Wspush, fresh_redis: RedisServer, token: str
) -> None:
    ids = [publish(fresh_redis, token, f"m{n}") for n in range(5)]
    headers = {"Last-Event-ID": ids[1]}
    async with SSEClient(f"{resumable.url}/sse?token={token}", headers) as client:
        await sse_until(client, 3)
        ids.append(publish(fresh_redis, token, "m5"))
        events = await sse_until(client, 4)
    assert messages(events) == ["m2", "m3", "m4", "m5"]
    assert [e["id"] for e in events] == ids[2:]


async def test_the_header_wins_over_the_query(
    resumable: Wspush, fresh_redis: RedisServer, token: str
) -> None:
    ids = [publish(fresh_redis, token, f"m{n}") for n in range(4)]
    url = f"{resumable.url}/sse?token={token}&last_event_id={ids[0]}"
    async with SSEClient(url, {"Last-Event-ID": ids[2]}) as client:
        events = await sse_until(client, 1)
    assert messages(events) == ["m3"]
    async with SSEClient(url) as client:
        events = await sse_until(client, 3)
    assert messages(events) == ["m1", "m2", "m3"]


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("too old", "trimmed"),
        ("garbage", "unknown"),
        ("future", "unknown"),
        ("another token", "unknown"),
        ("expired history", "unknown"),
    ],
)
async def test_a_position_that_cannot_resume_is_a_reset_not_a_refusal(
    resumable: Wspush, fresh_redis: RedisServer, token: str, case: str, reason: str
) -> None:
    ids = [publish(fresh_redis, token, f"m{n}", size=3) for n in range(6)]
    current = ids[-1]
    position = {
        "too old": ids[0],
        "garbage": "not-an-id!~{}",
        "future": "99999999999999-0." + ids[0].split(".", 1)[1],
        "another token": publish(fresh_redis, token + "-other", "x"),
        "expired history": ids[-1],
    }[case]
    if case == "expired history":
        with fresh_redis.client() as client:
            client.delete(history.history_key(f"example.{token}".encode()))
        await asyncio.sleep(0.01)
        current = publish(fresh_redis, token, "after")
    async with SSEClient(f"{resumable.url}/sse?token={token}", {"Last-Event-ID": position}) as c:
        assert c.status == 200
        events = await sse_until(c, 1)
        assert events[0] == {"event": "wspush-reset", "id": current, "data": reason}
        live = publish(fresh_redis, token, "live")
        events = await sse_until(c, 2)
    assert events[1:] == [{"id": live, "data": "live"}]
    assert messages(events) == ["live"]


async def test_redis_restarted_without_persistence_is_a_reset(
    resumable: Wspush, fresh_redis: RedisServer, token: str
) -> None:
    before = publish(fresh_redis, token, "before")
    fresh_redis.kill()
    fresh_redis.start()
    resumable.wait_ready(timeout=20)
    async with SSEClient(f"{resumable.url}/sse?token={token}", {"Last-Event-ID": before}) as c:
        events = await sse_until(c, 1)
    assert events[0]["event"] == "wspush-reset"


async def test_a_websocket_with_the_meta_subprotocol_resumes_with_ids(
    resumable: Wspush, fresh_redis: RedisServer, token: str
) -> None:
    ids = [publish(fresh_redis, token, f"m{n}") for n in range(3)]
    url = resumable.ws_url(token) + f"&last_event_id={ids[0]}"
    async with websocket(url, subprotocols=[META]) as ws:
        assert ws.subprotocol == META
        frames = [await receive(ws) for _ in range(2)]
        live = publish(fresh_redis, token, "live")
        frames.append(await receive(ws))
    as_bytes = [f.encode() if isinstance(f, str) else f for f in frames]
    assert as_bytes == [
        f"id: {ids[1]}\n\nm1".encode(),
        f"id: {ids[2]}\n\nm2".encode(),
        f"id: {live}\n\nlive".encode(),
    ]


async def test_a_websocket_without_the_subprotocol_gets_raw_frames_as_before(
    resumable: Wspush, fresh_redis: RedisServer, token: str
) -> None:
    ids = [publish(fresh_redis, token, f"m{n}") for n in range(3)]
    async with websocket(resumable.ws_url(token) + f"&last_event_id={ids[0]}") as ws:
        assert ws.subprotocol is None
        assert [await receive(ws) for _ in range(2)] == [b"m1", b"m2"]


async def test_a_websocket_reset_and_position_in_the_meta_framing(
    resumable: Wspush, fresh_redis: RedisServer, token: str
) -> None:
    current = publish(fresh_redis, token, "m0")
    async with websocket(resumable.ws_url(token), subprotocols=[META]) as ws:
        assert await receive(ws) == f"event: wspush-position\nid: {current}\n\n".encode()
    async with websocket(
        resumable.ws_url(token) + "&last_event_id=junk", subprotocols=[META]
    ) as ws:
        assert await receive(ws) == f"event: wspush-reset\nid: {current}\n\nunknown".encode()


async def test_history_off_keeps_todays_stream(
    spawn: Callable[..., Wspush], fresh_redis: RedisServer, token: str
) -> None:
    relay = spawn("-redis", fresh_redis.address)
    async with SSEClient(f"{relay.url}/sse?token={token}", {"Last-Event-ID": "x"}) as client:
        await asyncio.sleep(0.3)
        fresh_redis.publish(f"example.{token}", "plain")
        await client.wait_for(b"data:plain\n\n")
        assert bytes(client.body) == b"data:plain\n\n"


async def test_hand_over_is_exact_under_concurrent_publishers(
    resumable: Wspush, fresh_redis: RedisServer, token: str
) -> None:
    """Clients drop and resume at random points while two publishers publish: every
    client ends with exactly the published sequence."""
    total, clients = 600, 4
    published: list[str] = []
    done = asyncio.Event()

    async def publisher(tag: str) -> None:
        client = redis.asyncio.Redis(port=fresh_redis.port)
        try:
            for n in range(total // 2):
                await history.apublish_with_history(
                    client, f"example.{token}".encode(), f"{tag}{n}".encode(), 1000, 3600
                )
                await asyncio.sleep(0.004)  # about 1.5 s of publishing, for many cycles
        finally:
            await client.aclose()

    cycles = 0

    async def sse_follower() -> list[str]:
        nonlocal cycles
        received: list[str] = []
        position = ""
        while True:
            cycles += 1
            headers = {"Last-Event-ID": position} if position else {}
            async with SSEClient(f"{resumable.url}/sse?token={token}", headers) as client:
                await asyncio.sleep(random.uniform(0.005, 0.03))  # then drop it, mid-stream
                for event in parse_events(bytes(client.body)):
                    assert "event" not in event, event  # no reset may happen here
                    if "data" in event:
                        received.append(event["data"])
                    position = event.get("id", position)
            if done.is_set() and len(received) >= total:
                return received

    async def websocket_follower() -> list[str]:
        nonlocal cycles
        received: list[str] = []
        position = ""
        while True:
            cycles += 1
            url = resumable.ws_url(token) + (f"&last_event_id={position}" if position else "")
            async with websocket(url, subprotocols=[META]) as ws:
                deadline = asyncio.get_running_loop().time() + random.uniform(0.005, 0.03)
                with contextlib.suppress(TimeoutError):
                    while (left := deadline - asyncio.get_running_loop().time()) > 0:
                        frame = await receive(ws, timeout=left)
                        head, _, body = bytes(frame).partition(b"\n\n")  # type: ignore[arg-type]
                        fields = dict(line.split(b": ", 1) for line in head.split(b"\n") if line)
                        assert b"event" not in fields or fields[b"event"] == b"wspush-position"
                        if b"event" not in fields:
                            received.append(body.decode())
                        position = fields.get(b"id", position.encode()).decode()
            if done.is_set() and len(received) >= total:
                return received

    followers = [asyncio.create_task(sse_follower()) for _ in range(clients // 2)]
    followers += [asyncio.create_task(websocket_follower()) for _ in range(clients // 2)]
    await asyncio.sleep(0.2)
    async with asyncio.timeout(90):
        await asyncio.gather(publisher("a"), publisher("b"))
        done.set()
        with fresh_redis.client() as client:
            key = history.history_key(f"example.{token}".encode())
            published = [entry[1][b"d"].decode() for entry in client.xrange(key)]
        results = await asyncio.gather(*followers)
    assert len(published) == total
    for kind, received in zip(["sse", "sse", "ws", "ws"], results, strict=True):
        assert received == published, (kind, received[:8], published[:8])
    assert cycles >= 100  # hundreds of disconnects and resumes, at random points


def test_the_history_is_bounded_and_expires(fresh_redis: RedisServer, token: str) -> None:
    for n in range(10 * SIZE):
        publish(fresh_redis, token, f"m{n}")
    with fresh_redis.client() as client:
        key = history.history_key(f"example.{token}".encode())
        assert client.xlen(key) == SIZE
        assert 0 < client.ttl(key) <= 3600


class DelayingProxy:
    """A TCP proxy in front of Redis, in a thread of its own, that holds up the relay's
    history reads: each chunk that carries an XREVRANGE waits `before` seconds before
    Redis gets it (between registering the client and reading history), and the replies
    on that connection wait `after` seconds before the relay gets them (between reading
    and going live)."""

    def __init__(self, redis_port: int, before: float, after: float) -> None:
        self.redis_port = redis_port
        self.before = before
        self.after = after
        self.reads = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> int:
        self.thread.start()
        started = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self.loop
        )
        self.server = started.result(timeout=5)
        return int(self.server.sockets[0].getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            self.server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self.redis_port
        )
        history = asyncio.Event()

        async def up() -> None:
            while data := await reader.read(65536):
                if b"XREVRANGE" in data:
                    self.reads += 1
                    history.set()
                    await asyncio.sleep(self.before)
                upstream_writer.write(data)
            upstream_writer.close()

        async def down() -> None:
            while data := await upstream_reader.read(65536):
                if history.is_set():
                    await asyncio.sleep(self.after)
                writer.write(data)
            writer.close()

        with contextlib.suppress(OSError):
            await asyncio.gather(up(), down())


async def follow(url: str, position: str, until: int, timeout: float = 20) -> list[dict[str, str]]:
    """One SSE connection from `position`, until `until` messages arrived."""
    headers = {"Last-Event-ID": position} if position else {}
    async with SSEClient(url, headers) as client:
        return await sse_until(client, until, timeout)


async def publish_steadily(server: RedisServer, token: str, count: int, pause: float) -> list[str]:
    client = redis.asyncio.Redis(port=server.port)
    channel = f"example.{token}".encode()
    try:
        ids = []
        for n in range(count):
            ids.append(
                (
                    await history.apublish_with_history(client, channel, b"p%d" % n, 1000, 60)
                ).decode()
            )
            await asyncio.sleep(pause)
        return ids
    finally:
        await client.aclose()


@pytest.mark.parametrize(("before", "after"), [(0.3, 0.0), (0.0, 0.3), (0.2, 0.2)])
async def test_publishes_during_a_slow_history_read_are_neither_lost_nor_doubled(
    spawn: Callable[..., Wspush], fresh_redis: RedisServer, token: str, before: float, after: float
) -> None:
    proxy = DelayingProxy(fresh_redis.port, before, after)
    with proxy as port:
        relay = spawn("-redis", f"127.0.0.1:{port}", "--history-size", "1000")
        start = publish(fresh_redis, token, "start")
        url = f"{relay.url}/sse?token={token}"
        publishing = asyncio.create_task(publish_steadily(fresh_redis, token, 60, 0.01))
        events = await follow(url, start, 60)
        ids = await publishing
        assert proxy.reads >= 1
    assert messages(events) == [f"p{n}" for n in range(60)]
    assert [e["id"] for e in events] == ids


async def test_a_hold_longer_than_the_queue_reads_history_again(
    spawn: Callable[..., Wspush], fresh_redis: RedisServer, token: str
) -> None:
    """More messages arrive during a slow read than a connection holds (--queue-size):
    the relay keeps at most that many, then reads again; the client still gets all."""
    proxy = DelayingProxy(fresh_redis.port, 0.5, 0.0)
    with proxy as port:
        relay = spawn("-redis", f"127.0.0.1:{port}", "--history-size", "1000", "--queue-size", "5")
        start = publish(fresh_redis, token, "start")
        publishing = asyncio.create_task(publish_steadily(fresh_redis, token, 40, 0.005))
        events = await follow(f"{relay.url}/sse?token={token}", start, 40)
        await publishing
        assert proxy.reads >= 2
    assert messages(events) == [f"p{n}" for n in range(40)]


async def test_the_relay_losing_its_subscription_repairs_connected_clients(
    resumable: Wspush, fresh_redis: RedisServer, token: str
) -> None:
    """CLIENT KILL TYPE pubsub while publishing: what was published while the relay
    resubscribed arrives, in order, before newer messages, with no client reconnect."""
    async with SSEClient(f"{resumable.url}/sse?token={token}") as client:
        await client.wait_for(b"\n\n")
        publishing = asyncio.create_task(publish_steadily(fresh_redis, token, 100, 0.005))
        await asyncio.sleep(0.15)
        with fresh_redis.client() as admin:
            assert admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub") >= 1
        await publishing
        events = await sse_until(client, 100, timeout=15)
    assert messages(events) == [f"p{n}" for n in range(100)]
    assert "wspush-reset" not in bytes(client.body).decode()


async def test_a_connected_client_gets_a_reset_when_redis_comes_back_empty(
    resumable: Wspush, fresh_redis: RedisServer, token: str
) -> None:
    async with SSEClient(f"{resumable.url}/sse?token={token}") as client:
        await client.wait_for(b"\n\n")
        publish(fresh_redis, token, "before")
        await sse_until(client, 1)
        fresh_redis.kill()
        fresh_redis.start()
        resumable.wait_ready(timeout=20)
        events = await sse_until(client, 2, timeout=10)
        assert events[-1]["event"] == "wspush-reset"
        after = publish(fresh_redis, token, "after")
        events = await sse_until(client, 3)
    assert events[-1] == {"id": after, "data": "after"}


async def test_a_page_handed_the_current_position_misses_nothing_published_since(
    resumable: Wspush, fresh_redis: RedisServer, token: str
) -> None:
    """The bootstrap gap: the backend reads the position with the state it renders, and
    the page connects from it; what was published in between still arrives."""
    publish(fresh_redis, token, "shown in the rendered state")
    with fresh_redis.client() as client:
        position = wspush.current_position(client, token)
        assert wspush.publish(client, token, "in between", history=SIZE) != position
    url = f"{resumable.url}/sse?token={token}&last_event_id={position}"
    async with SSEClient(url) as client:
        events = await sse_until(client, 1)
    assert messages(events) == ["in between"]


def test_publish_with_history_returns_the_id_and_plain_publish_the_receivers(
    fresh_redis: RedisServer, token: str
) -> None:
    with fresh_redis.client() as client:
        message_id = wspush.publish(client, token, {"n": 1}, history=SIZE)
        assert isinstance(message_id, str)
        assert history.Position.parse(message_id) is not None
        assert wspush.current_position(client, token) == message_id
        assert wspush.publish(client, token, "plain") == 0


async def test_a_fresh_client_during_the_first_publishes_of_a_history_gets_each_once(
    spawn: Callable[..., Wspush], fresh_redis: RedisServer, token: str
) -> None:
    """No Last-Event-ID, an empty history, and its first messages published while the
    client's read is held up: the first of them names no message before it, and must
    still be sent once, not again after the replay's position."""
    proxy = DelayingProxy(fresh_redis.port, 0.3, 0.0)
    with proxy as port:
        relay = spawn("-redis", f"127.0.0.1:{port}", "--history-size", "1000")
        publishing = asyncio.create_task(publish_steadily(fresh_redis, token, 40, 0.01))
        async with SSEClient(f"{relay.url}/sse?token={token}") as client:
            try:
                events = await sse_until(client, 40, timeout=10)
            except TimeoutError:
                raise AssertionError((bytes(client.body)[:600], relay.log()[-1500:])) from None
        await publishing
    assert messages(events) == [f"p{n}" for n in range(40)]
