"""The WebSocket opening handshake (RFC 6455 section 4.2) for requests httptools parsed.

uvicorn hands a WebSocket upgrade from its HTTP protocol to its WebSocket protocol by
serialising the request again, which websockets then parses again in Python, builds
`Headers` objects for and answers with a `Response` it formats a date for, only for
uvicorn to replace that date. That is most of the CPU a WebSocket connection costs to
set up. For the plain handshakes browsers and client libraries send, wspush's protocols
(`wspush.engine.http`) answer from the headers httptools already parsed instead.

`plain_handshake_key` only accepts what websockets would accept exactly as it is, and
returns None for everything else: uvicorn's own path then answers it, so every error
response and edge case stays uvicorn's and websockets'.

Upstream touched: none (it imports nothing of uvicorn's); the bytes of the 101 are those
uvicorn 0.54.0's websockets-sansio protocol writes with websockets 17.4, as
tests/test_engine.py compares.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SWITCHING_PROTOCOLS = (
    b"HTTP/1.1 101 Switching Protocols\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: "
)
# Well inside websockets' own limits (128 headers, 8 KiB lines), so nothing it would
# refuse for size is answered here.
MAX_HEADERS = 64
MAX_LENGTH = 4096
TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")


def plain_handshake_key(
    method: str, http_version: str, target: bytes, headers: Iterable[tuple[bytes, bytes]]
) -> bytes | None:
    """The Sec-WebSocket-Key of a valid, unremarkable handshake, or None.

    `headers` have lowercase names, as uvicorn's HTTP protocols give them. A handshake
    that asks for a subprotocol, repeats a header websockets wants once, or has anything
    websockets would check more closely, gets None.
    """
    if method != "GET" or http_version != "1.1":
        return None
    if len(target) > MAX_LENGTH or not target.isascii():
        return None
    key = version = upgrade = None
    connection_upgrade = False
    origins = 0
    for count, (name, value) in enumerate(headers, 1):
        if count > MAX_HEADERS or len(value) > MAX_LENGTH:
            return None
        if name == b"sec-websocket-key":
            if key is not None:
                return None
            key = value
        elif name == b"sec-websocket-version":
            if version is not None:
                return None
            version = value
        elif name == b"upgrade":
            if upgrade is not None:
                return None
            upgrade = value
        elif name == b"connection":
            if value.lower() == b"upgrade":  # what nearly every client sends
                connection_upgrade = True
                continue
            for option in value.split(b","):
                option = option.strip(b" \t")
                if not TOKEN.fullmatch(option):
                    return None
                connection_upgrade = connection_upgrade or option.lower() == b"upgrade"
        elif name == b"origin":
            origins += 1
        elif name == b"sec-websocket-protocol":
            return None
    if not connection_upgrade or version != b"13" or origins > 1 or key is None:
        return None
    if upgrade is None or upgrade.lower() != b"websocket":
        return None
    try:
        # Strict: only the base64 alphabet and correct padding, as websockets checks.
        if len(binascii.a2b_base64(key, strict_mode=True)) != 16:
            return None
    except binascii.Error:
        return None
    return key


def switching_protocols(
    key: bytes, headers: Iterable[tuple[bytes, bytes]], subprotocol: str | None = None
) -> bytes:
    """The 101 response, byte for byte as uvicorn's websockets-sansio protocol writes it:
    websockets' three handshake headers, then uvicorn's and the app's, names lowercased."""
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    parts = [SWITCHING_PROTOCOLS, accept, b"\r\n"]
    for name, value in headers:
        parts += [name.lower(), b": ", value, b"\r\n"]
    if subprotocol:
        parts += [b"Sec-WebSocket-Protocol: ", subprotocol.encode("latin-1"), b"\r\n"]
    parts.append(b"\r\n")
    return b"".join(parts)
