"""The WebSocket opening handshake (RFC 6455 section 4.2) for requests httptools parsed.

uvicorn hands a WebSocket upgrade from its HTTP protocol to its WebSocket protocol by
serialising the request again, which websockets then parses again in Python, builds
`Headers` objects for and answers with a `Response` it formats a date for, only for
uvicorn to replace that date. That is most of the CPU a WebSocket connection costs to
set up. For the plain handshakes browsers and client libraries send, wspush's protocols
(`wspush.engine.http`) answer from the headers httptools already parsed instead.

`plain_handshake_key` only accepts what websockets would accept exactly as it is, and
returns None for everything else: uvicorn's own path then answers it, so every error
response and edge case stays uvicorn's and websockets'. Size is not one of them: see
`lift_websockets_head_limits`.

Upstream touched (checked against websockets 17.4): `websockets.http11.MAX_LINE_LENGTH`
and `MAX_NUM_HEADERS` (see `lift_websockets_head_limits`); nothing of uvicorn's. The
bytes of the 101 are those uvicorn 0.54.0's websockets-sansio protocol writes with
websockets 17.4, as tests/test_engine.py compares.
"""

from __future__ import annotations

import binascii
import hashlib
import re
import sys
from collections.abc import Iterable, Mapping

from websockets import http11

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SWITCHING_PROTOCOLS = (
    b"HTTP/1.1 101 Switching Protocols\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: "
)
TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
# Headers a plain handshake has at most once (websockets checks them more closely).
ONCE = frozenset(
    (
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"upgrade",
        b"origin",
        b"sec-websocket-protocol",
    )
)


def lift_websockets_head_limits() -> None:
    """Let websockets parse any request head uvicorn hands it, whatever its size.

    uvicorn's HTTP protocol reads a request head whole, then hands an upgrade to
    websockets as bytes to parse again. websockets refuses a line over 8 KiB or more
    than 128 headers with a 414 or 431 that uvicorn's WebSocket protocol never writes
    (it only sends what websockets has to send once a request or a frame comes out):
    the client would wait for ever. By then the head is in memory anyway (wspush's HTTP
    protocol holds at most `--max-request-head` of it; a stock uvicorn's, any size), so
    these limits protect nothing; the relay's own limit answers instead, with 431 and
    the CORS header (`Admission._check_request_head`).

    They are websockets' documented knobs (WEBSOCKETS_MAX_LINE_LENGTH and
    WEBSOCKETS_MAX_NUM_HEADERS, read at import, looked up by its parser on every
    call), and so process-wide: they also apply to websockets clients in the process.
    """
    http11.MAX_LINE_LENGTH = sys.maxsize
    http11.MAX_NUM_HEADERS = sys.maxsize


def plain_handshake_key(
    method: str, http_version: str, target: bytes, headers: Iterable[tuple[bytes, bytes]]
) -> bytes | None:
    """The Sec-WebSocket-Key of a valid, unremarkable handshake, or None.

    `headers` have lowercase names, as uvicorn's HTTP protocols give them. A handshake
    that asks for a subprotocol, repeats a header websockets wants once, or has anything
    websockets would check more closely, gets None.
    """
    if method != "GET" or http_version != "1.1" or not target.isascii():
        return None
    fields: dict[bytes, bytes] = {}
    for name, value in headers:
        if name in fields:
            if name in ONCE:
                return None
            if name == b"connection":  # options of several lines count as one list
                value = fields[name] + b"," + value
        fields[name] = value
    return handshake_key(fields)


def handshake_key(fields: Mapping[bytes, bytes]) -> bytes | None:
    """`plain_handshake_key` of a GET over HTTP/1.1 whose header names (lowercase) are
    each given once, as `fields`: the Sec-WebSocket-Key, or None."""
    if b"sec-websocket-protocol" in fields or fields.get(b"sec-websocket-version") != b"13":
        return None
    upgrade = fields.get(b"upgrade")
    if upgrade is None or upgrade.lower() != b"websocket":
        return None
    connection = fields.get(b"connection")
    if connection is None or not connection_upgrade(connection):
        return None
    key = fields.get(b"sec-websocket-key")
    if key is None:
        return None
    try:
        # Strict: only the base64 alphabet and correct padding, as websockets checks.
        if len(binascii.a2b_base64(key, strict_mode=True)) != 16:
            return None
    except binascii.Error:
        return None
    return key


def connection_upgrade(connection: bytes) -> bool:
    """Whether a `Connection` value is a valid list of options that has `upgrade`."""
    if connection.lower() == b"upgrade":  # what nearly every client sends
        return True
    found = False
    for option in connection.split(b","):
        option = option.strip(b" \t")
        if not TOKEN.fullmatch(option):
            return False
        found = found or option.lower() == b"upgrade"
    return found


def switching_protocols(
    key: bytes, headers: Iterable[tuple[bytes, bytes]], subprotocol: str | None = None
) -> bytes:
    """The 101 response, byte for byte as uvicorn's websockets-sansio protocol writes it:
    websockets' three handshake headers, then uvicorn's and the app's, names lowercased."""
    accept = binascii.b2a_base64(hashlib.sha1(key + GUID).digest(), newline=False)
    parts = [SWITCHING_PROTOCOLS, accept, b"\r\n"]
    for name, value in headers:
        parts += [name.lower(), b": ", value, b"\r\n"]
    if subprotocol:
        parts += [b"Sec-WebSocket-Protocol: ", subprotocol.encode("latin-1"), b"\r\n"]
    parts.append(b"\r\n")
    return b"".join(parts)
