"""JWTs as client tokens: checked with PyJWT, routed by their `sub`, valid until `exp`.

A JWT says who the backend let in (`sub`, the route) and until when (`exp`). Every
refusal has a reason precise enough for the backend's developer and safe to show the
client: nothing in it comes from the token. The signature is checked before any claim,
so "token expired" is only ever said of a token the backend really issued.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

import jwt
from jwt.exceptions import InvalidSubjectError

from wspush.jwt_keys import VerificationKey
from wspush.tokens import MAX_TOKEN_BYTES, TokenError

# A JWT is three base64url parts; the query string may carry a few KiB.
MAX_JWT_BYTES = 8192
# Later than any real `exp` (year 287,396), early enough to be exact as a float.
NEVER = 2**53
_JWT_SHAPE = re.compile(rb"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
TOKEN_EXPIRED = "token expired"


def looks_like_jwt(token: bytes) -> bool:
    """Three base64url parts: what is checked as a JWT when HMAC tokens are also taken."""
    return _JWT_SHAPE.fullmatch(token) is not None


class JWTVerifier:
    """The JWT half of admission: `verify(token)` gives (route, expiry) or TokenError."""

    def __init__(
        self,
        keys: Sequence[VerificationKey],
        *,
        audience: str = "",
        issuer: str = "",
        leeway: float = 5.0,
        require_exp: bool = True,
        max_age: float = 0.0,
    ) -> None:
        self.keys = tuple(keys)
        self.algorithms = tuple(dict.fromkeys(a for key in keys for a in key.algorithms))
        self.audience = audience or None
        self.issuer = issuer or None
        self.leeway = leeway
        self.max_age = max_age
        required = ["sub"]
        if require_exp or max_age:
            required.append("exp")
        if max_age:
            required.append("iat")
        self._jwt = jwt.PyJWT({"require": required})

    def verify(self, token: bytes) -> tuple[bytes, float | None]:
        """The route (the `sub`, as bytes) and the wall-clock time at which the token
        stops being accepted (`exp` + leeway; None without `exp`)."""
        if len(token) > MAX_JWT_BYTES:
            raise TokenError(f"JWT longer than {MAX_JWT_BYTES} bytes")
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
        except jwt.PyJWTError:
            raise TokenError("malformed JWT") from None
        if algorithm not in self.algorithms:
            raise TokenError(f"JWT algorithm not accepted (only {', '.join(self.algorithms)})")
        claims = self._decode(token, algorithm)
        return self._route(claims["sub"]), self._expiry(claims)

    def _decode(self, token: bytes, algorithm: str) -> dict[str, Any]:
        """The claims, checked with each key of the token's algorithm (for rotation); each
        key with the algorithms of its own kind, whatever the token says."""
        for key in self.keys:
            if algorithm not in key.algorithms:
                continue
            try:
                claims: dict[str, Any] = self._jwt.decode(
                    token,
                    key.key,
                    algorithms=key.algorithms,
                    audience=self.audience,
                    issuer=self.issuer,
                    leeway=self.leeway,
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError as exc:
                raise TokenError(refusal_reason(exc)) from None
            return claims
        raise TokenError("JWT signature does not verify")

    def _route(self, subject: str) -> bytes:
        if not subject:
            raise TokenError("JWT sub is empty")
        try:
            route = subject.encode()
        except UnicodeEncodeError:  # a lone surrogate, written as a \ud800 escape
            raise TokenError("JWT sub is not valid Unicode") from None
        if len(route) > MAX_TOKEN_BYTES:
            raise TokenError(f"JWT sub longer than {MAX_TOKEN_BYTES} bytes")
        return route

    def _expiry(self, claims: dict[str, Any]) -> float | None:
        """When PyJWT starts refusing the token: `int(exp)` is what it compares."""
        if "exp" not in claims:
            return None
        expires = int(claims["exp"])
        if self.max_age and expires - int(claims["iat"]) > self.max_age:
            raise TokenError("JWT lifetime (exp - iat) longer than --jwt-max-age")
        return min(expires, NEVER) + self.leeway


def refusal_reason(error: jwt.PyJWTError) -> str:
    """What to tell the client about a validly signed token PyJWT refused."""
    if isinstance(error, jwt.ExpiredSignatureError):
        return TOKEN_EXPIRED
    if isinstance(error, jwt.ImmatureSignatureError):
        return "token not yet valid"
    if isinstance(error, jwt.MissingRequiredClaimError):
        return f"JWT has no {error.claim}"
    if isinstance(error, jwt.InvalidAudienceError):
        return "JWT audience not accepted"
    if isinstance(error, jwt.InvalidIssuerError):
        return "JWT issuer not accepted"
    if isinstance(error, InvalidSubjectError):
        return "JWT sub is not a string"
    return "malformed JWT"


def sign_jwt(
    secret: str | bytes,
    sub: str,
    ttl: float,
    *,
    audience: str = "",
    issuer: str = "",
    algorithm: str = "HS256",
    claims: dict[str, Any] | None = None,
) -> str:
    """A JWT for `sub` that wspush accepts for `ttl` seconds from now, signed with an HS
    secret: what a backend hands a page (`wspush.sign_jwt`, `wspush token --jwt`)."""
    if ttl <= 0:
        raise ValueError("ttl must be greater than 0")
    now = time.time()
    payload: dict[str, Any] = {
        **(claims or {}),
        "sub": sub,
        "iat": int(now),
        "exp": int(now + ttl),
    }
    if audience:
        payload["aud"] = audience
    if issuer:
        payload["iss"] = issuer
    return jwt.encode(payload, secret, algorithm=algorithm)
