"""Whether the installed uvicorn, httptools and websockets offer what the engine uses.

The engine subclasses uvicorn's protocols and restates two of their constructors, so a
uvicorn release that renames a method or adds an attribute would break it at run time,
on some connection. `problem()` looks before anything is served: the versions are those
the engine was checked against, every upstream name the engine calls exists, and
uvicorn's constructors assign no attribute the restated ones leave out. If anything is
off, wspush logs one warning and serves through uvicorn's stock protocols (plain ASGI:
the same behaviour, without the engine's speed); it never fails to start over it.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.metadata
import inspect
import textwrap
from collections.abc import Callable
from typing import Any

# (package, first version checked, first version not checked), as pyproject.toml pins.
CHECKED = (
    ("uvicorn", (0, 54), (0, 55)),
    ("httptools", (0, 6), (0, 10)),
    ("websockets", (13, 0), (18, 0)),
)

# Upstream names the engine calls or overrides: module, then attributes (dotted).
REQUIRED = {
    "httptools": [
        "HttpRequestParser.set_dangerous_leniencies",
        "HttpRequestParser.should_keep_alive",
        "HttpParserUpgrade",
        "HttpParserError",
        "parse_url",
    ],
    "uvicorn.logging": ["TRACE_LOG_LEVEL"],
    "uvicorn.server": ["ServerState"],
    "uvicorn.protocols.http.flow_control": ["FlowControl.drain"],
    "uvicorn.protocols.http.httptools_impl": [
        "HttpToolsProtocol._should_upgrade",
        "HttpToolsProtocol.handle_websocket_upgrade",
        "HttpToolsProtocol._start_asgi_task",
        "HttpToolsProtocol.connection_lost",
        "HttpToolsProtocol.connection_made",
        "HttpToolsProtocol.data_received",
        "HttpToolsProtocol.on_headers_complete",
        "HttpToolsProtocol.on_response_complete",
        "RequestResponseCycle.send",
        "STATUS_LINE",
    ],
    "uvicorn.protocols.utils": [
        "ClientDisconnected",
        "get_client_addr",
        "get_path_with_query_string",
    ],
    "uvicorn.protocols.websockets.websockets_sansio_impl": [
        "WebSocketsSansIOProtocol.send",
        "WebSocketsSansIOProtocol.run_asgi",
        "WebSocketsSansIOProtocol.send_receive_event_to_app",
        "WebSocketsSansIOProtocol.shutdown",
        "WebSocketsSansIOProtocol.start_keepalive",
        "WebSocketsSansIOProtocol.stop_keepalive",
        "WebSocketsSansIOProtocol.on_task_complete",
        "WebSocketsSansIOProtocol.connection_made",
        "WebSocketsSansIOProtocol.data_received",
    ],
    "uvicorn.middleware.proxy_headers": [
        "ProxyHeadersMiddleware",
        "_TrustedHosts.get_trusted_client_address",
    ],
    "websockets.server": ["ServerProtocol.send_close", "ServerProtocol.data_to_send"],
    "websockets.protocol": ["OPEN"],
    "websockets.http11": ["MAX_LINE_LENGTH", "MAX_NUM_HEADERS"],
}
# The keyword arguments the engine passes to upstream constructors.
SIGNATURES = {
    ("uvicorn.protocols.http.httptools_impl", "RequestResponseCycle"): {
        "scope", "transport", "flow", "logger", "access_logger", "access_log",
        "default_headers", "message_event", "expect_100_continue", "keep_alive",
        "on_response",
    },
    ("websockets.server", "ServerProtocol"): {"state", "max_size", "logger"},
}  # fmt: skip


def version_of(package: str) -> tuple[int, ...]:
    """The installed version's leading numbers: "0.54.0" is (0, 54, 0)."""
    numbers: list[int] = []
    for part in importlib.metadata.version(package).split("."):
        digits = "".join(char for char in part if char.isdigit())
        if not digits or digits != part:
            if digits and part.startswith(digits):
                numbers.append(int(digits))
            break
        numbers.append(int(part))
    return tuple(numbers)


def assigned_attributes(function: Callable[..., Any], target: str = "self") -> set[str]:
    """The attributes a function assigns on `target` (`target.name = ...`), by its source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.ctx, ast.Store)
        and isinstance(node.value, ast.Name)
        and node.value.id == target
    }


def _problems() -> list[str]:
    found: list[str] = []
    for package, low, high in CHECKED:
        try:
            version = version_of(package)
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{package} is not installed")
            continue
        if not low <= version < high:
            shown = ".".join(map(str, version))
            found.append(
                f"{package} {shown} is outside the versions the engine was checked against "
                f"({'.'.join(map(str, low))} to below {'.'.join(map(str, high))})"
            )
    if found:
        return found
    for module_name, names in REQUIRED.items():
        module = importlib.import_module(module_name)
        for dotted in names:
            value: Any = module
            for part in dotted.split("."):
                value = getattr(value, part, None)
            if value is None:
                found.append(f"{module_name}.{dotted} is missing")
    for (module_name, name), wanted in SIGNATURES.items():
        parameters = inspect.signature(getattr(importlib.import_module(module_name), name))
        missing = wanted - set(parameters.parameters)
        if missing:
            found.append(f"{module_name}.{name}() takes no {', '.join(sorted(missing))}")
    if found:
        return found
    return _restated_constructors()


def class_defaults(cls: type) -> set[str]:
    """The data attributes `cls` itself defines: defaults its instances read until set."""
    return {
        name
        for name, value in vars(cls).items()
        if not name.startswith("__")
        and not callable(value)
        and not isinstance(value, (property, classmethod, staticmethod))
    }


def _restated_constructors() -> list[str]:
    """uvicorn's protocol constructors assign nothing the engine's restatements omit."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    from wspush.engine.front import StreamCycle
    from wspush.engine.http import HttpToolsDirectProtocol
    from wspush.engine.websocket import WebSocketsSansIODirectProtocol

    found = []
    pairs: list[tuple[str, list[Any], list[Any], set[str]]] = [
        (
            "HttpToolsProtocol",
            [HttpToolsProtocol.__init__, HttpToolsProtocol.connection_made],
            [HttpToolsDirectProtocol.__init__, HttpToolsDirectProtocol.connection_made],
            set(),
        ),
        (
            "WebSocketsSansIOProtocol",
            [WebSocketsSansIOProtocol.__init__, WebSocketsSansIOProtocol.connection_made],
            [
                WebSocketsSansIODirectProtocol.for_parsed_handshake,
                WebSocketsSansIODirectProtocol.open_parsed,
                WebSocketsSansIODirectProtocol._open_without_task,
            ],
            # a property there, built on first use; and the state kept as class defaults
            {"conn", *class_defaults(WebSocketsSansIODirectProtocol)},
        ),
        (
            "RequestResponseCycle",
            [RequestResponseCycle.__init__],
            [StreamCycle.__init__],
            class_defaults(StreamCycle),
        ),
    ]
    for name, theirs, ours, covered in pairs:
        upstream = {name for function in theirs for name in assigned_attributes(function)}
        restated = {name for function in ours for name in assigned_attributes(function)}
        missing = upstream - restated - covered
        if missing:
            found.append(f"uvicorn's {name} now sets {', '.join(sorted(missing))}")
    return found


@functools.cache
def problem() -> str | None:
    """Why the engine cannot serve with the installed packages, or None if it can."""
    try:
        found = _problems()
    except Exception as exc:  # an import or a source that is not there: not the engine's day
        return f"{type(exc).__name__}: {exc}"
    return "; ".join(found) or None
