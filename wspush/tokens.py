"""Client tokens: read from the query string as Go does, and verified with HMAC.

A token is kept as bytes from the moment it is percent-decoded, because Redis channel
names are bytes: routing compares the token with the channel suffix without decoding.
"""

from __future__ import annotations

import base64
import hmac
import re
from urllib.parse import unquote_to_bytes

from wspush.settings import decode_base64url

MAX_TOKEN_BYTES = 64
SIGNATURE_SIZE = 16  # an MD5 digest
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")


class TokenError(ValueError):
    """The request's token is refused; the message says why (safe to show the client)."""


def token_from_query(query_string: bytes) -> bytes:
    """The first `token` parameter, decoded like Go's `url.ParseQuery` + `Values.Get`.

    A pair containing ';' or a bad percent escape is dropped, '+' means space, and a
    missing token is returned as empty.
    """
    for pair in query_string.split(b"&"):
        if not pair or b";" in pair:
            continue
        name, _, value = pair.partition(b"=")
        if query_unescape(name) != b"token":
            continue
        decoded = query_unescape(value)
        if decoded is not None:
            return decoded
    return b""


def query_unescape(text: bytes) -> bytes | None:
    """Go's `url.QueryUnescape`; None where Go returns an error."""
    if b"%" not in text:
        return text.replace(b"+", b" ")
    if _BAD_ESCAPE.search(text):
        return None
    return unquote_to_bytes(text.replace(b"+", b" "))


def authorize(query_string: bytes, key: bytes | None) -> bytes:
    """The routing token of a request, or TokenError with the reason it is refused."""
    token = token_from_query(query_string)
    if not token:
        raise TokenError("missing token")
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenError(f"token longer than {MAX_TOKEN_BYTES} bytes")
    if key is not None and not verify(token, key):
        raise TokenError("token signature does not verify")
    return token


def verify(token: bytes, key: bytes) -> bool:
    """Go wspush's check: base64url(payload + HMAC-MD5(key, payload)), payload not empty."""
    raw = decode_base64url(token)
    if raw is None or len(raw) <= SIGNATURE_SIZE:
        return False
    payload, signature = raw[:-SIGNATURE_SIZE], raw[-SIGNATURE_SIZE:]
    return hmac.compare_digest(signature, hmac.new(key, payload, "md5").digest())


def sign(key: bytes, payload: bytes) -> str:
    """A token that `verify` accepts for `payload` (what a backend hands to a client)."""
    if not payload:
        raise ValueError("the payload of a signed token must not be empty")
    signature = hmac.new(key, payload, "md5").digest()
    return base64.urlsafe_b64encode(payload + signature).rstrip(b"=").decode()
