"""Client tokens: read from the query string as Go does, and verified with HMAC.

A token is kept as bytes from the moment it is percent-decoded, because Redis channel
names are bytes: routing compares the token with the channel suffix without decoding.
"""

from __future__ import annotations

import base64
import hmac
import re
from collections.abc import Sequence
from urllib.parse import unquote_to_bytes

from wspush.settings import decode_base64url

MAX_TOKEN_BYTES = 64
DIGEST_SIZES = {"md5": 16, "sha256": 32}
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
# Single bytes as ints: `int in bytes` looks for the byte at once, where `bytes in bytes`
# first tries (and fails, building a TypeError) to read its argument as an int.
SEMICOLON, PERCENT = ord(";"), ord("%")
# A query string that is only `token=VALUE` with nothing to decode in VALUE: what nearly
# every client sends, read in one match (the general loop would find the same).
_LONE_PLAIN_TOKEN = re.compile(rb"token=([^&;%+]*)")


class TokenError(ValueError):
    """The request's token is refused; the message says why (safe to show the client)."""


def token_from_query(query_string: bytes) -> bytes:
    """The first `token` parameter, decoded like Go's `url.ParseQuery` + `Values.Get`.

    A pair containing ';' or a bad percent escape is dropped, '+' means space, and a
    missing token is returned as empty.
    """
    lone = _LONE_PLAIN_TOKEN.fullmatch(query_string)
    if lone is not None:
        return lone.group(1)
    return query_parameter(query_string, b"token")


def query_parameter(query_string: bytes, wanted: bytes) -> bytes:
    """The first parameter `wanted` of a query string, decoded as `token_from_query`
    says; empty when there is none."""
    for pair in query_string.split(b"&"):
        if not pair or SEMICOLON in pair:
            continue
        name, _, value = pair.partition(b"=")
        if query_unescape(name) != wanted:
            continue
        decoded = query_unescape(value)
        if decoded is not None:
            return decoded
    return b""


def query_unescape(text: bytes) -> bytes | None:
    """Go's `url.QueryUnescape`; None where Go returns an error."""
    if PERCENT not in text:
        return text.replace(b"+", b" ")
    if _BAD_ESCAPE.search(text):
        return None
    return unquote_to_bytes(text.replace(b"+", b" "))


def authorize(query_string: bytes, keys: Sequence[bytes] = (), digest: str = "md5") -> bytes:
    """The routing token of a request, or TokenError with the reason it is refused.

    With keys, the token must be signed with one of them (see `verify`).
    """
    token = token_from_query(query_string)
    if not token:
        raise TokenError("missing token")
    return check(token, keys, digest)


def check(token: bytes, keys: Sequence[bytes] = (), digest: str = "md5") -> bytes:
    """A plain or (with keys) HMAC-signed token as its own route, or TokenError."""
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenError(f"token longer than {MAX_TOKEN_BYTES} bytes")
    if keys and not verify(token, keys, digest):
        raise TokenError("token signature does not verify")
    return token


def verify(token: bytes, keys: Sequence[bytes] | bytes, digest: str = "md5") -> bool:
    """Go wspush's check: base64url(payload + HMAC(key, payload)), payload not empty.

    Several keys allow rotation: a token signed with any of them verifies. Each
    comparison is constant-time; every key is tried, whichever matches.
    """
    size = DIGEST_SIZES[digest]
    raw = decode_base64url(token)
    if raw is None or len(raw) <= size:
        return False
    payload, signature = raw[:-size], raw[-size:]
    candidates = (keys,) if isinstance(keys, bytes) else keys
    matches = [
        hmac.compare_digest(signature, hmac.new(key, payload, digest).digest())
        for key in candidates
    ]
    return any(matches)


def sign(key: bytes, payload: bytes, digest: str = "md5") -> str:
    """A token that `verify` accepts for `payload` (what a backend hands to a client)."""
    if not payload:
        raise ValueError("the payload of a signed token must not be empty")
    signature = hmac.new(key, payload, digest).digest()
    return base64.urlsafe_b64encode(payload + signature).rstrip(b"=").decode()
