"""Response heads of task-free SSE streams, encoded once by uvicorn's own `send`.

Upstream touched (checked against uvicorn 0.54.0):
- `uvicorn.protocols.http.httptools_impl.RequestResponseCycle`: its constructor
  (`scope`, `transport`, `flow`, `logger`, `access_logger`, `access_log`,
  `default_headers`, `message_event`, `expect_100_continue`, `keep_alive`,
  `on_response`), its `send` for `http.response.start`, and the attributes `send` sets
  or reads: `access_log`, `default_headers`, `keep_alive`, `chunked_encoding`,
  `response_started`, `waiting_for_100_continue`, `transport`, `scope`, `logger`,
  `access_logger`, `flow`;
- `uvicorn.server.ServerState`, which keeps the cache (as `wspush_response_heads`).
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from uvicorn.protocols.http.httptools_impl import RequestResponseCycle
from uvicorn.server import ServerState

from wspush.lightweight import LightEvent


class HeadRecorder:
    """A transport stand-in that keeps what is written to it."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False


class ResponseHeads:
    """Response heads of task-free streams, encoded once and written as bytes.

    uvicorn's `send` checks every header against two regular expressions and builds the
    head anew for each response: about a fifth of the CPU an SSE stream costs to open.
    Every stream of a relay has the same head, apart from uvicorn's `Date` (renewed
    once a second, as a new default-headers list) and an echoed CORS origin. This
    encodes each distinct head with uvicorn's own `send`, on a stand-in transport, and
    then writes the bytes, leaving the cycle in the state `send` would have.
    """

    __slots__ = ("defaults", "heads")

    def __init__(self) -> None:
        self.defaults: list[tuple[bytes, bytes]] | None = None
        self.heads: dict[tuple[Any, ...], tuple[bytes, bool | None, bool]] = {}

    def start(
        self, cycle: RequestResponseCycle, status: int, headers: list[tuple[bytes, bytes]]
    ) -> None:
        """What `cycle.send` does for `http.response.start` (not paused for writing)."""
        message: Any = {"type": "http.response.start", "status": status, "headers": headers}
        if cycle.access_log:  # one access-log line per response: uvicorn's send writes it
            run_now(cycle.send(message))
            return
        if cycle.default_headers is not self.defaults:
            self.defaults = cycle.default_headers
            self.heads = {}
        key = (status, cycle.keep_alive, cycle.scope["method"], *headers)
        head = self.heads.get(key)
        if head is None:
            head = self.heads[key] = self._encode(cycle, message)
        data, cycle.chunked_encoding, cycle.keep_alive = head
        cycle.response_started = True
        cycle.waiting_for_100_continue = False
        cycle.transport.write(data)

    @staticmethod
    def _encode(cycle: RequestResponseCycle, message: Any) -> tuple[bytes, bool | None, bool]:
        recorder = HeadRecorder()
        probe = RequestResponseCycle(
            scope=cycle.scope,
            transport=recorder,  # type: ignore[arg-type]
            flow=cycle.flow,
            logger=cycle.logger,
            access_logger=cycle.access_logger,
            access_log=False,
            default_headers=cycle.default_headers,
            message_event=LightEvent(),  # type: ignore[arg-type]
            expect_100_continue=False,
            keep_alive=cycle.keep_alive,
            on_response=lambda: None,
        )
        run_now(probe.send(message))
        return b"".join(recorder.written), probe.chunked_encoding, probe.keep_alive


def response_heads(server_state: ServerState) -> ResponseHeads:
    """The server's head cache, kept with the state its connections share."""
    heads: ResponseHeads | None = getattr(server_state, "wspush_response_heads", None)
    if heads is None:
        heads = ResponseHeads()
        server_state.wspush_response_heads = heads  # type: ignore[attr-defined]
    return heads


def run_now(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine that has nothing to wait for to its end, here and now.

    uvicorn's `send` of a response head waits only while writing is paused, which the
    caller has ruled out; if it waits anyway, that is a bug, not a slow client.
    """
    try:
        coroutine.send(None)
    except StopIteration:
        return
    coroutine.close()
    raise RuntimeError("a coroutine expected to finish at once had to wait")
