"""wspush's server engine: the only modules that touch uvicorn's, httptools' and
websockets' internals.

They subclass uvicorn's httptools and websockets-sansio protocols to offer what
`wspush.contract` describes: a direct writer per connection (the `wspush.direct_write`
scope extension) and streams opened without a task. Nothing outside this package
depends on them: without them (another ASGI server, uvicorn's stock protocols, or
versions `compat` finds lacking) the relay serves the same behaviour through plain ASGI.

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
