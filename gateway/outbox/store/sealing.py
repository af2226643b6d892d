"""Encryption at rest: AES-256-GCM for the stored columns that carry invoice data
(docs/encryption.md).

A `Sealer` holds the current key (which seals every new write) and any previous keys (which
only open what they sealed, so a key can be rotated without downtime). Without a key it seals
nothing: values are stored as given, and sealed values cannot be opened (`StoreError`).

Formats, told apart by their prefix (plaintext never starts with one):

    bytes (body)   b"\\x00gw1" | key id (8 bytes) | nonce (12 bytes) | ciphertext and GCM tag
    text (JSON)    "gwsealed1:" | key id (16 hex digits) | ":" | base64(nonce | ciphertext, tag)

The key id is the first 8 bytes of HMAC-SHA256(key, "invoice-gateway key id"): it names a key
without revealing it. The associated data binds each value to its key id and to where it is
stored (submission id and column), so a sealed value moved to another row or column does not
open. A plaintext body that happens to start with b"\\x00gw" is stored behind b"\\x00gw0".
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.errors import ConfigError, StoreError

__all__ = [
    "KEY_ENV",
    "PREVIOUS_KEYS_ENV",
    "Sealer",
    "SealingError",
    "decode_key",
    "key_id",
    "new_key",
]

#: The current key, when the configuration names none; setting it turns encryption on.
KEY_ENV: Final = "GATEWAY_ENCRYPTION_KEY"
#: Previous keys (comma-separated), for reading only, when the configuration names none.
PREVIOUS_KEYS_ENV: Final = "GATEWAY_ENCRYPTION_PREVIOUS_KEYS"

MAGIC: Final = b"\x00gw1"
ESCAPE: Final = b"\x00gw0"
RESERVED: Final = b"\x00gw"
TEXT_PREFIX: Final = "gwsealed1:"
KEY_BYTES: Final = 32
KEY_ID_BYTES: Final = 8
NONCE_BYTES: Final = 12
_KEY_ID_LABEL: Final = b"invoice-gateway key id"


class SealingError(StoreError):
    """A stored value cannot be opened: its key is not configured, or it was tampered with."""


def key_id(key: bytes) -> str:
    """The key's id: 16 hex digits that name it without revealing it."""
    return hmac.new(key, _KEY_ID_LABEL, hashlib.sha256).digest()[:KEY_ID_BYTES].hex()


def new_key() -> str:
    """A new random key, base64 (what `GATEWAY_ENCRYPTION_KEY` holds)."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


def decode_key(text: str, where: str) -> bytes:
    """The 32 bytes a base64 key holds; `ConfigError` naming `where` if it holds no such key."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError([f"{where}: not base64 (expected 32 random bytes, base64)"]) from None
    if len(key) != KEY_BYTES:
        raise ConfigError(
            [f"{where}: {len(key)} bytes, expected {KEY_BYTES} (32 random bytes, base64)"]
        )
    return key


class Sealer:
    """Seals with the current key, opens with any configured key."""

    def __init__(self, current: bytes | None = None, previous: Iterable[bytes] = ()) -> None:
        self._current = current
        self._current_id = key_id(current) if current is not None else None
        self._keys: dict[str, AESGCM] = {}
        for key in (*((current,) if current is not None else ()), *previous):
            self._keys.setdefault(key_id(key), AESGCM(key))

    @classmethod
    def from_settings(
        cls, key: str | None, previous: Sequence[str], environ: Mapping[str, str]
    ) -> Sealer:
        """The sealer of the configured keys (resolved secrets, base64), else of `KEY_ENV` and
        `PREVIOUS_KEYS_ENV`; `ConfigError` naming a malformed key."""
        current: bytes | None = None
        if key is not None:
            current = decode_key(key, "store.encryption.key")
        elif environ.get(KEY_ENV):
            current = decode_key(environ[KEY_ENV], KEY_ENV)
        olds = [
            decode_key(k, f"store.encryption.previous_keys[{i}]") for i, k in enumerate(previous)
        ]
        if not previous and environ.get(PREVIOUS_KEYS_ENV):
            olds = [
                decode_key(k, f"{PREVIOUS_KEYS_ENV}[{i}]")
                for i, k in enumerate(environ[PREVIOUS_KEYS_ENV].split(","))
                if k.strip()
            ]
        return cls(current, olds)

    @property
    def enabled(self) -> bool:
        """True when new writes are sealed."""
        return self._current is not None

    @property
    def current_id(self) -> str | None:
        return self._current_id

    @property
    def key_ids(self) -> frozenset[str]:
        """Every key id this sealer can open."""
        return frozenset(self._keys)

    # -- bytes ------------------------------------------------------------------------------

    def seal(self, plaintext: bytes, context: str = "") -> bytes:
        """`plaintext` sealed under the current key (as stored if there is none)."""
        if self._current_id is None:
            return ESCAPE + plaintext if plaintext.startswith(RESERVED) else plaintext
        kid = bytes.fromhex(self._current_id)
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._keys[self._current_id].encrypt(nonce, plaintext, _aad(kid, context))
        return MAGIC + kid + nonce + sealed

    def open(self, stored: bytes, context: str = "") -> bytes:
        """What `seal` was given; plaintext as stored comes back as it is."""
        if not stored.startswith(RESERVED):
            return stored
        if stored.startswith(ESCAPE):
            return stored[len(ESCAPE) :]
        if not stored.startswith(MAGIC) or len(stored) < len(MAGIC) + KEY_ID_BYTES + NONCE_BYTES:
            raise SealingError(f"{_where(context)}: stored in an unknown format")
        kid = stored[len(MAGIC) : len(MAGIC) + KEY_ID_BYTES]
        nonce = stored[len(MAGIC) + KEY_ID_BYTES : len(MAGIC) + KEY_ID_BYTES + NONCE_BYTES]
        body = stored[len(MAGIC) + KEY_ID_BYTES + NONCE_BYTES :]
        cipher = self._keys.get(kid.hex())
        if cipher is None:
            raise SealingError(
                f"{_where(context)} is encrypted under key {kid.hex()}, which is not configured"
            )
        try:
            return cipher.decrypt(nonce, body, _aad(kid, context))
        except InvalidTag:
            raise SealingError(
                f"{_where(context)} does not decrypt under key {kid.hex()}: altered or moved"
            ) from None

    # -- text -------------------------------------------------------------------------------

    def seal_text(self, text: str, context: str = "") -> str:
        """`text` (JSON) sealed under the current key, as text (as given if there is none)."""
        if self._current_id is None:
            return text
        sealed = self.seal(text.encode(), context)
        rest = sealed[len(MAGIC) + KEY_ID_BYTES :]
        return f"{TEXT_PREFIX}{self._current_id}:{base64.b64encode(rest).decode()}"

    def open_text(self, stored: str, context: str = "") -> str:
        """What `seal_text` was given; plaintext comes back as it is."""
        if not stored.startswith(TEXT_PREFIX):
            return stored
        kid, _, rest = stored[len(TEXT_PREFIX) :].partition(":")
        try:
            raw = MAGIC + bytes.fromhex(kid) + base64.b64decode(rest, validate=True)
        except (binascii.Error, ValueError):
            raise SealingError(f"{_where(context)}: stored in an unknown format") from None
        return self.open(raw, context).decode()

    # -- what a stored value is under -------------------------------------------------------

    @staticmethod
    def stored_key_id(stored: bytes | str | None) -> str | None:
        """The key id a stored value is sealed under; None for plaintext (or NULL)."""
        if isinstance(stored, str):
            if stored.startswith(TEXT_PREFIX):
                return stored[len(TEXT_PREFIX) :].partition(":")[0]
            return None
        if stored is not None and bytes(stored).startswith(MAGIC):
            return bytes(stored)[len(MAGIC) : len(MAGIC) + KEY_ID_BYTES].hex()
        return None

    def is_current(self, stored: bytes | str | None) -> bool:
        """True when `stored` needs no re-sealing: NULL, sealed under the current key, or (with
        no current key) plaintext."""
        if stored is None:
            return True
        return self.stored_key_id(stored) == self._current_id

    def check_key_ids(self, found: Iterable[str], where: str) -> None:
        """`StoreError` if values in the store at `where` are sealed under key ids no configured
        key has: starting would fail every read of them."""
        unknown = sorted(set(found) - set(self._keys))
        if not unknown:
            return
        if not self._keys:
            hint = f"Set {KEY_ENV} (or store.encryption.key) to the key they were sealed with"
        else:
            hint = (
                "Configure that key as the current key or in store.encryption.previous_keys "
                f"(or {PREVIOUS_KEYS_ENV})"
            )
        configured = ", ".join(sorted(self._keys)) or "none"
        raise StoreError(
            f"the store at {where} holds values encrypted under key id(s) "
            f"{', '.join(unknown)}; configured key ids: {configured}. {hint}"
        )


def _aad(kid: bytes, context: str) -> bytes:
    return MAGIC + kid + context.encode()


def _where(context: str) -> str:
    return f"stored value ({context})" if context else "stored value"
