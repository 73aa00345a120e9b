"""The bytes on the wire: WebSocket frames (RFC 6455 section 5.2), SSE events as the Go
wspush frames them, and HTTP/1.1 chunks. Pure functions; `Message` caches their results
so a message fanned out to a thousand clients is encoded once."""

from __future__ import annotations

import struct

OPCODE_TEXT = 0x1
OPCODE_BINARY = 0x2
OPCODE_PING = 0x9
NEWLINE = ord("\n")


# The 2-byte headers of final text and binary frames with a payload under 126 bytes, by
# length: most messages, so their header is looked up rather than built.
TEXT_HEADERS = tuple(bytes((0x80 | OPCODE_TEXT, length)) for length in range(126))
BINARY_HEADERS = tuple(bytes((0x80 | OPCODE_BINARY, length)) for length in range(126))


def websocket_frame(opcode: int, payload: bytes) -> bytes:
    """A final, unmasked frame: what a server sends."""
    length = len(payload)
    if length < 126:
        if opcode == OPCODE_TEXT:
            header = TEXT_HEADERS[length]
        elif opcode == OPCODE_BINARY:
            header = BINARY_HEADERS[length]
        else:
            header = bytes((0x80 | opcode, length))
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, length)
    return header + payload


def websocket_frame_size(length: int) -> int:
    """The bytes of the frame `websocket_frame` makes of a `length`-byte payload."""
    return length + (2 if length < 126 else 4 if length < 1 << 16 else 10)


def sse_event(payload: bytes) -> bytes:
    """Frame a message as the Go wspush does: one `data:` line per line, then a blank line.

    A line starting with a space gets `data: ` instead of `data:`: EventSource strips one
    leading space, so Go's form would lose it.
    """
    # Most messages are one line. (`in` with an int looks for the byte at once; with a
    # bytes argument it first tries, and fails, to read it as an int.)
    if NEWLINE not in payload:
        return (b"data: " if payload[:1] == b" " else b"data:") + payload + b"\n\n"
    lines = payload.split(b"\n")
    return (
        b"".join(
            [
                b"data: " + line + b"\n" if line[:1] == b" " else b"data:" + line + b"\n"
                for line in lines
            ]
        )
        + b"\n"
    )


def http_chunk(data: bytes) -> bytes:
    """`data` as one HTTP/1.1 chunk (RFC 9112 section 7.1)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def meta_frame_payload(payload: bytes, message_id: bytes | None, event: bytes = b"") -> bytes:
    """A message in the wspush.v1 WebSocket framing: header lines (`event: NAME` for a
    signal, `id: ID` when it has one), an empty line, then the message as published.

    A client splits at the first empty line; no id contains a newline, and the payload
    after it is untouched, so binary messages stay binary.
    """
    head = b"event: " + event + b"\n" if event else b""
    if message_id is not None:
        head += b"id: " + message_id + b"\n"
    return head + b"\n" + payload
