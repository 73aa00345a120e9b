"""Admission by token: which route a request's token opens, and until when.

The endpoints make one call, `Access.grant(query_string)`, whatever kind of token is
configured: a plain token (its own route, forever), an HMAC-signed token (the same, if
it verifies), or a JWT (its `sub`, until its `exp`). With both HMAC keys and JWT keys,
a token shaped like a JWT is checked as one and anything else as an HMAC token; with
only JWT keys, nothing but a JWT connects.
"""

from __future__ import annotations

from typing import NamedTuple

from wspush.jwt_tokens import JWTVerifier, looks_like_jwt
from wspush.settings import Settings
from wspush.tokens import TokenError, check, token_from_query


class Grant(NamedTuple):
    """What a token lets a connection do."""

    route: bytes  # the channel suffix whose messages it receives
    expires: float | None  # wall-clock time it stops being valid; None: never


class Access:
    """The token rules of one relay, built once from its settings."""

    def __init__(self, settings: Settings) -> None:
        self.keys = settings.keys
        self.digest = settings.hmac_digest
        self.jwt: JWTVerifier | None = None
        if settings.jwt_configured:
            self.jwt = JWTVerifier(
                settings.jwt_keys,
                audience=settings.jwt_audience,
                issuer=settings.jwt_issuer,
                leeway=settings.jwt_leeway,
                require_exp=settings.jwt_require_exp,
                max_age=settings.jwt_max_age,
            )

    def grant(self, query_string: bytes) -> Grant:
        """The grant of a request's `?token=`, or TokenError saying why it has none."""
        token = token_from_query(query_string)
        if not token:
            raise TokenError("missing token")
        if self.jwt is None:
            return Grant(check(token, self.keys, self.digest), None)
        if looks_like_jwt(token):
            return Grant(*self.jwt.verify(token))
        if self.keys:
            return Grant(check(token, self.keys, self.digest), None)
        raise TokenError("not a JWT (this server accepts only JWTs)")
