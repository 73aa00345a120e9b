"""Tokens are read from the query string as Go reads them and verified as Go verifies them."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wspush.settings import decode_key
from wspush.tokens import (
    TokenError,
    authorize,
    query_parameter,
    sign,
    token_from_query,
    verify,
)

VECTORS = json.loads((Path(__file__).parent / "data" / "hmac-token-vectors.json").read_text())


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: f"{v['key'][:6]}-{v['why']}")
def test_every_go_vector_agrees(vector: dict[str, object]) -> None:
    key = decode_key(str(vector["key"]))
    token = str(vector["token"]).encode()
    assert verify(token, key) is vector["valid"]


def test_vectors_cover_accepted_and_refused_tokens() -> None:
    assert {v["valid"] for v in VECTORS} == {True, False}
    assert len(VECTORS) >= 30


SIGNED = [v for v in VECTORS if v["why"] == "signed with this key"]


def test_a_changed_last_character_can_still_verify_as_in_go() -> None:
    """Go ignores the unused low bits of the last base64 character, and so does wspush."""
    lenient = [v for v in VECTORS if v["why"] == "last character altered" and v["valid"]]
    assert lenient, "the vectors include Go's lenient case"
    for vector in lenient:
        assert verify(vector["token"].encode(), decode_key(vector["key"]))


@pytest.mark.parametrize("vector", SIGNED, ids=lambda v: v["token"])
def test_sign_reproduces_go_tokens(vector: dict[str, str]) -> None:
    key = decode_key(vector["key"])
    assert sign(key, bytes.fromhex(vector["payload_hex"])) == vector["token"]


@given(key=st.binary(min_size=1, max_size=64), payload=st.binary(min_size=1, max_size=30))
def test_signed_tokens_verify_and_any_flipped_byte_does_not(key: bytes, payload: bytes) -> None:
    token = sign(key, payload).encode()
    assert verify(token, key)
    raw = bytearray(base64.urlsafe_b64decode(token + b"=" * (-len(token) % 4)))
    raw[-1] ^= 1
    tampered = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=")
    assert not verify(tampered, key)


@pytest.mark.parametrize(
    ("query", "token"),
    [
        (b"token=Foo", b"Foo"),
        (b"a=1&token=Foo&b=2", b"Foo"),
        (b"token=first&token=second", b"first"),
        (b"token=a%20b", b"a b"),
        (b"token=a+b", b"a b"),
        (b"token=%E2%9C%93", "\u2713".encode()),
        (b"tok%65n=Foo", b"Foo"),
        (b"token=%zz&token=next", b"next"),
        (b"token=ab%2", b""),
        (b"token=a;b", b""),
        (b"x=1;token=Foo", b""),
        (b"token", b""),
        (b"token=", b""),
        (b"", b""),
        (b"&&token=Foo&&", b"Foo"),
        (b"token=a=b", b"a=b"),
        (b"%zz=1&token=ok", b"ok"),
    ],
)
def test_query_parsing_follows_go_url_parsequery(query: bytes, token: bytes) -> None:
    assert token_from_query(query) == token


@given(st.binary(max_size=40) | st.binary(max_size=40).map(lambda tail: b"token=" + tail))
def test_a_lone_plain_token_is_read_as_the_general_parse_reads_it(query: bytes) -> None:
    """`token_from_query` reads a query of only `token=VALUE` in one match; whatever the
    query, it gives what the general loop (`query_parameter`) gives."""
    assert token_from_query(query) == query_parameter(query, b"token")


def test_missing_token_is_refused() -> None:
    with pytest.raises(TokenError, match="missing"):
        authorize(b"other=1")


def test_token_limit_is_64_bytes_of_decoded_utf8() -> None:
    assert authorize(b"token=" + b"a" * 64) == b"a" * 64
    with pytest.raises(TokenError, match="64"):
        authorize(b"token=" + b"a" * 65)
    # 22 three-byte characters are 22 characters but 66 bytes.
    with pytest.raises(TokenError, match="64"):
        authorize(b"token=" + b"%E2%9C%93" * 22)


def test_with_a_key_only_signed_tokens_pass() -> None:
    key = b"secret"
    good = sign(key, b"user42")
    assert authorize(b"token=" + good.encode(), [key]) == good.encode()
    with pytest.raises(TokenError, match="signature"):
        authorize(b"token=dXNlcjQy", [key])


def test_with_several_keys_a_token_signed_by_any_of_them_passes() -> None:
    new, old, other = b"new-key", b"old-key", b"not-ours"
    keys = [new, old]
    assert verify(sign(new, b"u1").encode(), keys)
    assert verify(sign(old, b"u1").encode(), keys)
    assert not verify(sign(other, b"u1").encode(), keys)


def test_sha256_tokens_verify_only_as_sha256() -> None:
    key = b"secret"
    token = sign(key, b"user42", "sha256").encode()
    assert len(base64.urlsafe_b64decode(token + b"==")) == 6 + 32
    assert verify(token, key, "sha256")
    assert not verify(token, key, "md5")
    assert not verify(sign(key, b"user42").encode(), key, "sha256")
    assert authorize(b"token=" + token, [key], "sha256") == token


@given(st.binary(max_size=300))
def test_any_query_string_gives_a_token_or_a_token_error(query: bytes) -> None:
    try:
        token = authorize(query)
    except TokenError:
        return
    assert 0 < len(token) <= 64
