"""When a server that is not wspush's own command (a bare `uvicorn wspush.app:app`) has
been told to exit, so the relay can drain its clients before the server cuts them.

uvicorn tells an app nothing until its connections are closed (WebSockets with 1012)
and its responses finished, which SSE streams never are. sse-starlette already watches
for the exit, process-wide, by patching `uvicorn.Server.handle_exit` and by looking at
the server behind the SIGTERM handler; the relay waits on the same watcher rather than
doing either again.

Upstream touched (checked against sse-starlette 3.7.0): the private
`sse_starlette.EventSourceResponse._listen_for_exit_signal`. If it is not there, the
relay does not drain early: uvicorn's own shutdown closes the clients.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from sse_starlette import EventSourceResponse

logger = logging.getLogger("wspush")


async def server_exiting() -> None:
    """Return once the server has been told to exit (never, if that cannot be known)."""
    listen: Callable[[], Awaitable[None]] | None = getattr(
        EventSourceResponse, "_listen_for_exit_signal", None
    )
    if listen is None:
        logger.debug("sse-starlette offers no exit watcher: no drain before the server's own")
        await asyncio.Event().wait()
        return
    await listen()
