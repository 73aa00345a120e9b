"""The keys JWTs are checked with, and the algorithms each kind of key allows.

The algorithms come from the key, never from the token (RFC 8725, section 2.1): a
secret verifies HS256, HS384 and HS512, an RSA key RS256, a P-256 key ES256, an Ed25519
or Ed448 key EdDSA. So `alg: none` is never
accepted, and a token signed with HMAC over a public key's bytes (algorithm confusion)
never meets an HMAC key. Loaded once, by the settings; a bad value is a ValueError whose
message the settings put after the setting's name.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
# RFC 7518 section 3.2 wants an HMAC key at least as long as the hash's output. Shorter
# secrets are what many backends have (and what PyJWT accepts with a warning), so they
# work, with a warning at start-up.
MIN_SECRET_BYTES = 32
logger = logging.getLogger("wspush.jwt")
MIN_RSA_BITS = 2048
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----", re.DOTALL)


@dataclass(frozen=True)
class VerificationKey:
    """One configured key and the algorithms it verifies."""

    key: Any = field(repr=False)  # bytes for HMAC (a secret), else a public key
    algorithms: tuple[str, ...]
    name: str  # where it came from, for messages: "secret 2", "keys.pem"

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as PEM: settings travel to worker processes (`--workers`), and
        `cryptography`'s key objects cannot be pickled."""
        if isinstance(self.key, bytes):
            return VerificationKey, (self.key, self.algorithms, self.name)
        pem = self.key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        return unpickle_public_key, (pem, self.algorithms, self.name)


def unpickle_public_key(pem: bytes, algorithms: tuple[str, ...], name: str) -> VerificationKey:
    return VerificationKey(load_pem_public_key(pem), algorithms, name)


def secret_keys(value: str) -> tuple[VerificationKey, ...]:
    """`--jwt-secret`: comma-separated secrets (the first signs, all verify), each used as
    its UTF-8 bytes, as PyJWT, Django and FastAPI use theirs."""
    keys = []
    for number, text in enumerate(value.split(","), 1):
        secret = text.strip().encode()
        if not secret:
            raise ValueError(f"secret {number} is empty")
        if secret.startswith(b"-----BEGIN"):
            raise ValueError(f"secret {number} is a PEM key; give its file to --jwt-public-key")
        if len(secret) < MIN_SECRET_BYTES:
            logger.warning(
                "--jwt-secret: secret %d has %d bytes; RFC 7518 wants at least %d for HS256 "
                "(and 48 for HS384, 64 for HS512): a short secret can be guessed offline "
                "from one token (`wspush keygen` makes a good one)",
                number,
                len(secret),
                MIN_SECRET_BYTES,
            )
        keys.append(VerificationKey(secret, HMAC_ALGORITHMS, f"secret {number}"))
    return tuple(keys)


def public_keys(value: str) -> tuple[VerificationKey, ...]:
    """`--jwt-public-key`: comma-separated PEM files, each holding one or more public keys."""
    keys: list[VerificationKey] = []
    for text in value.split(","):
        path = Path(text.strip())
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
        blocks = [match.group(0) for match in _PEM_BLOCK.finditer(data)]
        if not blocks:
            raise ValueError(f"{str(path)!r} holds no PEM block (-----BEGIN PUBLIC KEY-----)")
        for number, block in enumerate(blocks, 1):
            name = str(path) if len(blocks) == 1 else f"{path} (key {number})"
            keys.append(public_key(block, name))
    return tuple(keys)


def public_key(pem: bytes, name: str) -> VerificationKey:
    """One PEM block as a key of a supported kind, or ValueError saying what it is."""
    try:
        if b"PRIVATE KEY" in pem.split(b"\n", 1)[0]:
            key = load_pem_private_key(pem, password=None).public_key()
            logger.warning(
                "--jwt-public-key: %s is a private key; wspush uses only its public half. "
                "Give the relay the public key alone, so it cannot sign tokens",
                name,
            )
        else:
            key = load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{name} is not a PEM public key: {exc}") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"{name} is a {key.key_size}-bit RSA key; at least {MIN_RSA_BITS}")
        return VerificationKey(key, ("RS256",), name)
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError(
                f"{name} is an EC key on {key.curve.name}: unsupported (ES256 needs P-256)"
            )
        return VerificationKey(key, ("ES256",), name)
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return VerificationKey(key, ("EdDSA",), name)
    raise ValueError(
        f"{name} is a {type(key).__name__}: unsupported (use RSA, P-256 or Ed25519 keys)"
    )
