"""wspush's server engine: the only modules that touch uvicorn's, httptools' and
websockets' internals.

They offer what `wspush.contract` describes: a direct writer per connection (the
`wspush.direct_write` scope extension) and streams opened without a task. Every
connection starts on `front`'s protocol of its own, which opens a relay stream from the
first head and hands anything else to subclasses of uvicorn's httptools and
websockets-sansio protocols. Nothing outside this package
depends on them: without them (another ASGI server, uvicorn's stock protocols, or
versions `compat` finds lacking) the relay serves the same behaviour through plain ASGI.

- `front`: the protocol every connection starts on (streams opened from the first head);
- `http`: the HTTP protocol (direct writes, task-free SSE streams, the upgrade hand-off);
- `websocket`: the WebSocket protocol (direct writes, task-free WebSockets);
- `handshake`: the opening handshake answered from what httptools parsed;
- `proxy`: the scope uvicorn's proxy-headers middleware would pass on;
- `heads`: SSE response heads encoded once by uvicorn's own `send`;
- `exit`: when a bare uvicorn has been told to exit (through sse-starlette's watcher);
- `compat`: whether the installed versions offer what these need.

Each module's docstring lists the upstream names it touches and the versions it was
checked against; pyproject.toml pins those packages below their next minor release.
"""
