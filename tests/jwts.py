"""JWTs for the tests: key pairs made with `cryptography`, signed tokens, and forged
ones (alg none, HMAC over a public key) built by hand, as an attacker would."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

SECRET = "s" * 8 + "-current-secret-of-forty-bytes-"  # 40 bytes: HS256
OLD_SECRET = "o" * 8 + "-previous-secret-still-verifies"
ROTATED_OUT = "r" * 8 + "-retired-secret-no-longer-taken"
AUDIENCE = "wspush-test"
ISSUER = "https://backend.example"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True)
class KeyPair:
    algorithm: str
    private: PrivateKey
    path: Path  # the public key's PEM file

    @property
    def public_pem(self) -> bytes:
        return self.path.read_bytes()


def write_public_key(key: PrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


def make_key_pairs(directory: Path) -> dict[str, KeyPair]:
    """An RSA, a P-256 and an Ed25519 key pair, public keys written as PEM files."""
    keys: dict[str, PrivateKey] = {
        "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ES256": ec.generate_private_key(ec.SECP256R1()),
        "EdDSA": ed25519.Ed25519PrivateKey.generate(),
    }
    return {
        algorithm: KeyPair(algorithm, key, write_public_key(key, directory / f"{algorithm}.pem"))
        for algorithm, key in keys.items()
    }


def claims(sub: str = "alice", ttl: float = 600, **extra: Any) -> dict[str, Any]:
    """Claims a relay configured with AUDIENCE and ISSUER accepts (override any)."""
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": sub,
        "iat": now,
        "exp": now + int(ttl),
        "aud": AUDIENCE,
        "iss": ISSUER,
        **extra,
    }
    return {name: value for name, value in base.items() if value is not None}


def signed(payload: dict[str, Any], key: Any = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(payload, key, algorithm=algorithm)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(header: dict[str, Any], payload: Any, hmac_key: bytes | None) -> str:
    """A token built by hand: HMAC-SHA256 over it with `hmac_key`, or no signature."""
    return forged_raw(json.dumps(header).encode(), json.dumps(payload).encode(), hmac_key)


def forged_raw(header: bytes, payload: bytes, hmac_key: bytes | None) -> str:
    """`forged` with the header and payload as given, JSON or not."""
    signing_input = f"{b64(header)}.{b64(payload)}"
    signature = b""
    if hmac_key is not None:
        signature = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"
