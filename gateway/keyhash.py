"""Salted, slow hashes of tenant API keys (docs/configuration.md#tenant-keys).

Two schemes, both from the standard library, written in the PHC string style:

    scrypt$ln=14,r=8,p=1$<salt>$<hash>          hashlib.scrypt, N = 2**ln
    pbkdf2-sha256$i=600000$<salt>$<hash>         hashlib.pbkdf2_hmac("sha256", …)

`<salt>` (at least 16 bytes, random per key) and `<hash>` (32 bytes) are standard base64
without padding. Verification compares in constant time (`hmac.compare_digest`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Final, Literal

SCRYPT: Final = "scrypt"
PBKDF2: Final = "pbkdf2-sha256"
Scheme = Literal["scrypt", "pbkdf2-sha256"]

#: Defaults for new hashes: scrypt with N=2**14, r=8, p=1 takes 16 MiB and tens of milliseconds.
SCRYPT_LN: Final = 14
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
PBKDF2_ITERATIONS: Final = 600_000
SALT_BYTES: Final = 16
HASH_BYTES: Final = 32

_SHAPE = re.compile(
    r"^(scrypt|pbkdf2-sha256)\$([a-z]+=\d+(?:,[a-z]+=\d+)*)\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)$"
)


@dataclass(frozen=True, slots=True)
class KeyHash:
    """A parsed salted hash; `verify` recomputes it for a presented key."""

    scheme: Scheme
    params: tuple[tuple[str, int], ...]
    salt: bytes
    digest: bytes

    def _param(self, name: str) -> int:
        return dict(self.params)[name]

    def derive(self, key: str) -> bytes:
        """The hash of `key` under this hash's scheme, parameters and salt."""
        secret = key.encode()
        if self.scheme == SCRYPT:
            n, r, p = 2 ** self._param("ln"), self._param("r"), self._param("p")
            return hashlib.scrypt(
                secret,
                salt=self.salt,
                n=n,
                r=r,
                p=p,
                maxmem=256 * n * r * p + 1024 * 1024,
                dklen=len(self.digest),
            )
        return hashlib.pbkdf2_hmac(
            "sha256", secret, self.salt, self._param("i"), dklen=len(self.digest)
        )

    def verify(self, key: str) -> bool:
        """Whether `key` hashes to this (constant-time comparison)."""
        return hmac.compare_digest(self.derive(key), self.digest)

    def encode(self) -> str:
        params = ",".join(f"{k}={v}" for k, v in self.params)
        return f"{self.scheme}${params}${_b64(self.salt)}${_b64(self.digest)}"


def hash_key(key: str, scheme: Scheme = SCRYPT) -> str:
    """A new salted hash of `key` (a fresh random salt), as text for the config or the store."""
    salt = secrets.token_bytes(SALT_BYTES)
    params: tuple[tuple[str, int], ...]
    if scheme == SCRYPT:
        params = (("ln", SCRYPT_LN), ("r", SCRYPT_R), ("p", SCRYPT_P))
    else:
        params = (("i", PBKDF2_ITERATIONS),)
    blank = KeyHash(scheme, params, salt, bytes(HASH_BYTES))
    return KeyHash(scheme, params, salt, blank.derive(key)).encode()


def parse_key_hash(text: str) -> KeyHash:
    """Parse `scrypt$…` or `pbkdf2-sha256$…`; `ValueError` saying what is wrong."""
    match = _SHAPE.match(text.strip())
    if match is None:
        raise ValueError(
            "expected scrypt$ln=14,r=8,p=1$SALT$HASH or pbkdf2-sha256$i=600000$SALT$HASH "
            "(SALT and HASH in base64 without padding); `invoice-gateway tenant hash-key` makes one"
        )
    scheme, raw_params, raw_salt, raw_digest = match.groups()
    params = tuple(
        (name, int(value)) for name, value in (item.split("=") for item in raw_params.split(","))
    )
    given = dict(params)
    try:
        salt, digest = _unb64(raw_salt), _unb64(raw_digest)
    except (binascii.Error, ValueError):
        raise ValueError("the salt or hash is not valid base64") from None
    if len(salt) < SALT_BYTES:
        raise ValueError(f"the salt must be at least {SALT_BYTES} bytes")
    if not 16 <= len(digest) <= 64:
        raise ValueError("the hash must be 16 to 64 bytes")
    if scheme == SCRYPT:
        if set(given) != {"ln", "r", "p"}:
            raise ValueError("scrypt needs exactly the parameters ln, r and p")
        if not (10 <= given["ln"] <= 20 and 1 <= given["r"] <= 32 and 1 <= given["p"] <= 16):
            raise ValueError("scrypt parameters out of range (ln 10..20, r 1..32, p 1..16)")
        if 128 * given["r"] * given["p"] * 2 ** given["ln"] > 512 * 1024 * 1024:
            raise ValueError("scrypt parameters need more than 512 MiB of memory")
        ordered: tuple[tuple[str, int], ...] = (
            ("ln", given["ln"]),
            ("r", given["r"]),
            ("p", given["p"]),
        )
        return KeyHash(SCRYPT, ordered, salt, digest)
    if set(given) != {"i"}:
        raise ValueError("pbkdf2-sha256 needs exactly the parameter i (iterations)")
    if not 100_000 <= given["i"] <= 10_000_000:
        raise ValueError("pbkdf2-sha256 iterations must be 100000 to 10000000")
    return KeyHash(PBKDF2, (("i", given["i"]),), salt, digest)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
