"""JWTs as tokens: checked with the configured keys (algorithms fixed by each key's
kind), routed by `sub`, refused on connect with a precise reason; through the real
`python -m wspush` over real sockets, and the verifier on its own."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import InvalidStatus

from tests.clients import SSEClient, receive, websocket
from tests.conftest import RedisServer, Wspush
from tests.jwts import (
    AUDIENCE,
    ISSUER,
    OLD_SECRET,
    ROTATED_OUT,
    SECRET,
    KeyPair,
    b64,
    claims,
    forged,
    forged_raw,
    signed,
)
from wspush import create_app
from wspush.access import Access
from wspush.admission import Refusal
from wspush.hub import Transport
from wspush.jwt_tokens import MAX_JWT_BYTES, looks_like_jwt
from wspush.settings import Settings
from wspush.tokens import TokenError, sign

pytestmark = pytest.mark.anyio

CORS = "access-control-allow-origin"
HMAC_KEY = "aG1hYy1rZXktb2YtdGhlLXRlc3Rz"  # base64url of "hmac-key-of-the-tests"


@pytest.fixture(scope="module")
def jwt_relay(
    redis_server: RedisServer,
    key_pairs: dict[str, KeyPair],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Wspush]:
    """A relay taking JWTs (two secrets, three public keys) and HMAC tokens."""
    server = Wspush(
        tmp_path_factory.mktemp("jwt-relay"),
        "-redis",
        redis_server.address,
        "-hmac",
        HMAC_KEY,
        "--jwt-secret",
        f"{SECRET},{OLD_SECRET}",
        "--jwt-public-key",
        ",".join(str(pair.path) for pair in key_pairs.values()),
        "--jwt-audience",
        AUDIENCE,
        "--jwt-issuer",
        ISSUER,
        "--jwt-max-age",
        "3600",
    ).start()
    yield server
    with contextlib.suppress(Exception):
        server.stop()


def sse_url(server: Wspush, token: str) -> str:
    return f"{server.url}/sse?token={token}"


async def assert_delivers(server: Wspush, redis_server: RedisServer, token: str, sub: str) -> None:
    """Both transports, connected with `token`, get what is published to `sub`'s channel."""
    async with websocket(server.ws_url(token)) as ws, SSEClient(sse_url(server, token)) as sse:
        assert sse.status == 200
        message = f"for {sub} at {time.monotonic()}"
        redis_server.publish(f"example.{sub}", message)
        assert await receive(ws) == message.encode()
        await sse.wait_for(f"data:{message}\n\n".encode())


Answer = tuple[int, str, str | None]


def sse_refusal(server: Wspush, token: str) -> Answer:
    """(status, body, CORS header) of the SSE refusal of `token`."""
    response = httpx.get(sse_url(server, token), timeout=5)
    return response.status_code, response.text, response.headers.get(CORS)


async def refusal(server: Wspush, token: str) -> list[Answer]:
    """The SSE and the WebSocket refusal of `token`."""
    with pytest.raises(InvalidStatus) as refused:
        async with websocket(server.ws_url(token)):
            pass
    denied = refused.value.response
    assert denied.body is not None
    return [
        sse_refusal(server, token),
        (denied.status_code, denied.body.decode(), denied.headers.get(CORS)),
    ]


# -- through the relay ---------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["HS256", "RS256", "ES256", "EdDSA"])
async def test_a_valid_jwt_delivers_what_is_published_to_its_sub(
    jwt_relay: Wspush,
    redis_server: RedisServer,
    key_pairs: dict[str, KeyPair],
    algorithm: str,
    token: str,
) -> None:
    key = SECRET if algorithm == "HS256" else key_pairs[algorithm].private
    await assert_delivers(jwt_relay, redis_server, signed(claims(token), key, algorithm), token)


async def test_a_jwt_signed_with_any_configured_secret_connects_for_rotation(
    jwt_relay: Wspush, redis_server: RedisServer, token: str
) -> None:
    await assert_delivers(jwt_relay, redis_server, signed(claims(token), OLD_SECRET), token)


async def test_with_hmac_keys_too_a_token_that_is_not_a_jwt_is_checked_as_hmac(
    jwt_relay: Wspush, redis_server: RedisServer, token: str
) -> None:
    hmac_token = sign(b"hmac-key-of-the-tests", token.encode())
    await assert_delivers(jwt_relay, redis_server, hmac_token, hmac_token)
    for status, body, cors in await refusal(jwt_relay, token):  # plain: not signed
        assert (status, body, cors) == (400, "token signature does not verify\n", "*")


def now() -> int:
    return int(time.time())


REFUSALS: list[tuple[str, Callable[[dict[str, KeyPair]], str], str]] = [
    (
        "bad signature",
        lambda keys: signed(claims(), "x" * 40),
        "JWT signature does not verify",
    ),
    (
        "rotated-out secret",
        lambda keys: signed(claims(), ROTATED_OUT),
        "JWT signature does not verify",
    ),
    (
        "tampered ES256 signature",
        lambda keys: signed(claims(), keys["ES256"].private, "ES256")[:-4] + "AAAA",
        "JWT signature does not verify",
    ),
    ("expired", lambda keys: signed(claims(exp=now() - 10)), "token expired"),
    ("not yet valid", lambda keys: signed(claims(nbf=now() + 60)), "token not yet valid"),
    ("issued in the future", lambda keys: signed(claims(iat=now() + 60)), "token not yet valid"),
    ("wrong audience", lambda keys: signed(claims(aud="elsewhere")), "JWT audience not accepted"),
    ("no audience", lambda keys: signed(claims(aud=None)), "JWT has no aud"),
    ("wrong issuer", lambda keys: signed(claims(iss="https://evil")), "JWT issuer not accepted"),
    ("no issuer", lambda keys: signed(claims(iss=None)), "JWT has no iss"),
    ("no sub", lambda keys: signed(claims(sub=None)), "JWT has no sub"),
    ("empty sub", lambda keys: signed(claims(sub="")), "JWT sub is empty"),
    ("sub not a string", lambda keys: signed(claims(sub=42)), "JWT sub is not a string"),
    ("sub too long", lambda keys: signed(claims(sub="a" * 65)), "JWT sub longer than 64 bytes"),
    (
        "sub too long in UTF-8",
        lambda keys: signed(claims(sub="\u2713" * 22)),
        "JWT sub longer than 64 bytes",
    ),
    ("no exp", lambda keys: signed(claims(exp=None)), "JWT has no exp"),
    (
        "lifetime over --jwt-max-age",
        lambda keys: signed(claims(ttl=7200)),
        "JWT lifetime (exp - iat) longer than --jwt-max-age",
    ),
    ("malformed", lambda keys: "aaaa.bbbb.cccc", "malformed JWT"),
    (
        "signed payload not JSON",
        lambda keys: forged_raw(b'{"alg": "HS256"}', b"not json", SECRET.encode()),
        "malformed JWT",
    ),
    (
        "signed payload not an object",
        lambda keys: forged({"alg": "HS256"}, ["sub", "alice"], SECRET.encode()),
        "malformed JWT",
    ),
    ("header not JSON", lambda keys: f"{b64(b'nope')}.{b64(b'{}')}.AAAA", "malformed JWT"),
    (
        "exp not a number",
        lambda keys: signed(claims(exp="tomorrow")),
        "malformed JWT",
    ),
    (
        "alg none",
        lambda keys: forged({"alg": "none", "typ": "JWT"}, claims(), None),
        "JWT algorithm not accepted (only HS256, HS384, HS512, RS256, ES256, EdDSA)",
    ),
    (
        "alg None, differently spelt",
        lambda keys: forged({"alg": "None"}, claims(), None),
        "JWT algorithm not accepted (only HS256, HS384, HS512, RS256, ES256, EdDSA)",
    ),
    (
        "HMAC signed with the RSA public key (algorithm confusion)",
        lambda keys: forged({"alg": "HS256"}, claims(), keys["RS256"].public_pem),
        "JWT signature does not verify",
    ),
    (
        "an algorithm no key has",
        lambda keys: signed(claims(), keys["RS256"].private, "PS256"),
        "JWT algorithm not accepted (only HS256, HS384, HS512, RS256, ES256, EdDSA)",
    ),
    (
        "longer than the JWT limit",
        lambda keys: signed(claims(pad="p" * MAX_JWT_BYTES)),
        f"JWT longer than {MAX_JWT_BYTES} bytes",
    ),
]


@pytest.mark.parametrize(("why", "make", "reason"), REFUSALS, ids=[r[0] for r in REFUSALS])
async def test_each_bad_jwt_is_refused_with_400_its_reason_and_the_cors_header(
    jwt_relay: Wspush,
    key_pairs: dict[str, KeyPair],
    why: str,
    make: Callable[[dict[str, KeyPair]], str],
    reason: str,
) -> None:
    token = make(key_pairs)
    answers = await refusal(jwt_relay, token)
    for answer in answers:
        assert answer == (400, reason + "\n", "*")
    log = jwt_relay.log()
    assert f": 400 {reason}" in log
    assert "Traceback" not in log


async def test_an_expired_token_is_counted_apart_from_bad_ones(jwt_relay: Wspush) -> None:
    def refused(reason: str) -> float:
        text = httpx.get(f"{jwt_relay.url}/metrics", timeout=5).text
        line = f'wspush_connections_refused_total{{reason="{reason}"}} '
        return float(next(row for row in text.splitlines() if row.startswith(line)).split()[-1])

    expired, bad = refused("token_expired"), refused("bad_token")
    httpx.get(sse_url(jwt_relay, signed(claims(exp=now() - 10))), timeout=5)
    assert (refused("token_expired"), refused("bad_token")) == (expired + 1, bad)


async def test_with_only_public_keys_hmac_algorithms_are_refused_whatever_the_key(
    spawn: Callable[..., Wspush], redis_server: RedisServer, key_pairs: dict[str, KeyPair]
) -> None:
    rsa = key_pairs["RS256"]
    server = spawn("-redis", redis_server.address, "--jwt-public-key", str(rsa.path))
    payload = claims(aud=None, iss=None)
    for token in (
        forged({"alg": "HS256"}, payload, rsa.public_pem),
        forged({"alg": "HS256"}, payload, rsa.public_pem.strip()),
        forged({"alg": "none"}, payload, None),
    ):
        for answer in await refusal(server, token):
            assert answer == (400, "JWT algorithm not accepted (only RS256)\n", "*")


async def test_with_only_a_jwt_key_hmac_and_plain_tokens_are_refused(
    spawn: Callable[..., Wspush], redis_server: RedisServer, token: str
) -> None:
    server = spawn("-redis", redis_server.address, "--jwt-secret", SECRET)
    for refused in (token, sign(b"hmac-key-of-the-tests", token.encode())):
        for answer in await refusal(server, refused):
            assert answer == (400, "not a JWT (this server accepts only JWTs)\n", "*")
    await assert_delivers(server, redis_server, signed(claims(token, aud=None, iss=None)), token)


async def test_without_require_exp_a_jwt_that_never_expires_connects(
    spawn: Callable[..., Wspush], redis_server: RedisServer, token: str
) -> None:
    server = spawn("-redis", redis_server.address, "--jwt-secret", SECRET, "--no-jwt-require-exp")
    forever = signed({"sub": token})
    await assert_delivers(server, redis_server, forever, token)


async def test_per_token_limits_count_connections_by_sub(
    spawn: Callable[..., Wspush], redis_server: RedisServer, token: str
) -> None:
    server = spawn("-redis", redis_server.address, "--jwt-secret", SECRET, "--max-per-token", "1")
    first = signed(claims(token, aud=None, iss=None))
    second = signed(claims(token, aud=None, iss=None, jti="another token, same sub"))
    async with websocket(server.ws_url(first)):
        response = httpx.get(sse_url(server, second), timeout=5)
        assert response.status_code == 429


async def test_exact_subscribe_mode_subscribes_the_sub(
    spawn: Callable[..., Wspush], redis_server: RedisServer, token: str
) -> None:
    server = spawn(
        "-redis", redis_server.address, "--jwt-secret", SECRET, "--subscribe-mode", "exact"
    )
    await assert_delivers(server, redis_server, signed(claims(token, aud=None, iss=None)), token)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=6,
)
CLAIM_NAMES = st.sampled_from(["sub", "exp", "nbf", "iat", "aud", "iss", "jti", "x"])
CLAIMS = st.dictionaries(CLAIM_NAMES, JSON | st.integers(0, 2**40), max_size=8)
SEGMENT = st.text(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=.%", max_size=40
)
HEADERS = st.dictionaries(st.sampled_from(["alg", "typ", "kid", "crit", "b64"]), JSON, max_size=4)


def fuzzed_tokens() -> st.SearchStrategy[str]:
    """Validly signed tokens with any claims (or valid claims with some of them replaced),
    hand-built ones with any header, and tokens of any three segments."""
    return st.one_of(
        CLAIMS.map(
            lambda payload: forged({"alg": "HS256", "typ": "JWT"}, payload, SECRET.encode())
        ),
        st.builds(lambda h, p: forged(h, p, SECRET.encode()), HEADERS, CLAIMS),
        # valid claims with some replaced by anything: deep into the claim checks
        CLAIMS.map(lambda extra: forged({"alg": "HS256"}, {**claims(), **extra}, SECRET.encode())),
        st.builds(lambda a, b, c: f"{a}.{b}.{c}", SEGMENT, SEGMENT, SEGMENT),
    )


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(token=fuzzed_tokens())
def test_fuzzed_claims_and_segments_get_200_or_400_never_an_error(
    jwt_relay: Wspush, token: str
) -> None:
    with httpx.stream("GET", sse_url(jwt_relay, token), timeout=5) as response:
        assert response.status_code in (200, 400), response.status_code
    log = jwt_relay.log()
    assert "Traceback" not in log
    assert "Exception" not in log


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(token=fuzzed_tokens())
def test_fuzzed_websocket_tokens_get_101_or_400_never_an_error(
    jwt_relay: Wspush, token: str
) -> None:
    async def connect() -> int:
        try:
            async with websocket(jwt_relay.ws_url(token)):
                return 101
        except InvalidStatus as refused:
            return refused.response.status_code

    assert asyncio.run(connect()) in (101, 400)
    assert "Traceback" not in jwt_relay.log()


# -- the decision on its own -------------------------------------------------------------


def access(**overrides: Any) -> Access:
    return Access(Settings(jwt_secret=SECRET, **overrides))


def test_a_jwt_grants_its_sub_until_exp_plus_leeway() -> None:
    exp = now() + 100
    grant = access(jwt_leeway=7).grant(
        b"token=" + signed(claims(exp=exp, aud=None, iss=None)).encode()
    )
    assert grant.route == b"alice"
    assert grant.expires == exp + 7


@pytest.mark.parametrize("late", ["exp", "nbf", "iat"])
def test_leeway_applies_to_exp_nbf_and_iat(late: str) -> None:
    skewed = {"exp": now() - 10, "nbf": now() + 10, "iat": now() + 10}[late]
    token = b"token=" + signed(claims(aud=None, iss=None, **{late: skewed})).encode()
    assert access(jwt_leeway=30).grant(token).route == b"alice"
    with pytest.raises(TokenError, match=r"token expired|token not yet valid"):
        access(jwt_leeway=5).grant(token)


def test_plain_and_hmac_tokens_are_as_before_without_jwt_keys() -> None:
    assert Access(Settings()).grant(b"token=a.b.c") == (b"a.b.c", None)
    with pytest.raises(TokenError, match="longer than 64"):
        Access(Settings()).grant(b"token=" + signed(claims()).encode())


def test_looks_like_jwt_means_three_base64url_parts() -> None:
    assert looks_like_jwt(signed(claims()).encode())
    assert looks_like_jwt(b"a.b.")
    assert not looks_like_jwt(b"a.b")
    assert not looks_like_jwt(b"a.b.c.d")
    assert not looks_like_jwt(b"a+b.c.d")
    assert not looks_like_jwt(sign(b"key", b"payload").encode())


@settings(max_examples=400, deadline=None)
@given(token=fuzzed_tokens())
def test_the_verifier_only_ever_grants_or_refuses(token: str) -> None:
    verifier = access(jwt_audience=AUDIENCE, jwt_issuer=ISSUER, jwt_max_age=3600)
    try:
        grant = verifier.grant(b"token=" + token.encode())
    except TokenError:
        return  # refused, with its reason: the only other outcome allowed
    assert 0 < len(grant.route) <= 64
    assert grant.expires is not None


def test_a_refused_request_admitted_twice_checks_its_token_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """wspush's own server may admit a refused request twice (without a task, then through
    ASGI, with the same scope); the costly signature check runs once, and the refusal is
    counted once."""
    admission = create_app(Settings(jwt_secret=SECRET)).endpoints.admission  # type: ignore[attr-defined]
    checks: list[bytes] = []
    grant = admission.access.grant
    monkeypatch.setattr(
        admission.access, "grant", lambda query: checks.append(query) or grant(query)
    )

    def scope(token: str) -> dict[str, object]:
        query = b"token=" + token.encode()
        return {"type": "http", "path": "/sse", "headers": [], "query_string": query}

    refused = scope(signed(claims(), "x" * 40))
    for _ in range(2):
        with pytest.raises(Refusal, match="JWT signature does not verify"):
            admission.admit(refused, Transport.SSE)
    with pytest.raises(Refusal, match="token expired") as expired:
        admission.admit(scope(signed(claims(exp=now() - 60))), Transport.SSE)
    assert expired.value.counter == "refused_token_expired"
    assert len(checks) == 2
    assert admission.stats.sessions_seen == 2
    assert admission.stats.refused_bad_token == 1
