"""The Nuonuo request signature (docs/design.md#signed-calls), shared with the simulator."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

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
    digest = hmac.new(app_secret.encode(), message, hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def new_senid() -> str:
    """A fresh 32-hex-digit request id."""
    return secrets.token_hex(16)


def new_nonce() -> str:
    """A fresh 8-digit nonce."""
    return f"{secrets.randbelow(10**8):08d}"
