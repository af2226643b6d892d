"""The Nuonuo request signature (docs/design.md#signed-calls), shared with the simulator."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
from collections.abc import Callable

#: Query parameters the signature scheme owns; the gateway always sets them itself.
SIGNED_QUERY_PARAMS = ("senid", "nonce", "timestamp", "appkey")


def signature_message(
    *, app_key: str, senid: str, nonce: str, timestamp: str, body: bytes
) -> bytes:
    """The exact bytes the platform signs for a call to `/open/v1/services`."""
    head = f"a=services&l=v1&p=open&k={app_key}&i={senid}&n={nonce}&t={timestamp}&f="
    return head.encode() + body


def sign(
    *, app_secret: str, app_key: str, senid: str, nonce: str, timestamp: str, body: bytes
) -> str:
    """Base64(HMAC-SHA1(appSecret, message)) as sent in `X-Nuonuo-Sign`."""
    message = signature_message(
        app_key=app_key, senid=senid, nonce=nonce, timestamp=timestamp, body=body
    )
    mac = _keyed(app_secret).copy()
    mac.update(message)
    return base64.b64encode(mac.digest()).decode()


@functools.lru_cache(maxsize=64)
def _keyed(app_secret: str) -> hmac.HMAC:
    """HMAC-SHA1 with the secret's key schedule done once (each call signs a copy)."""
    return hmac.new(app_secret.encode(), digestmod=hashlib.sha1)


def new_senid() -> str:
    """A fresh 32-hex-digit request id."""
    return secrets.token_hex(16)


#: The nonce is a positive 8-digit number, as the platform documents it: never a leading zero
#: (`00123456` is not a number of 8 digits), so the smallest is 10000000.
NONCE_MIN = 10_000_000
NONCE_MAX = 99_999_999


def new_nonce(randbelow: Callable[[int], int] = secrets.randbelow) -> str:
    """A fresh nonce, uniform from NONCE_MIN to NONCE_MAX; `randbelow(n)` gives 0 <= x < n (tests
    pass a seeded one)."""
    return str(NONCE_MIN + randbelow(NONCE_MAX - NONCE_MIN + 1))
