"""The platform access token as the auth schemes keep it, and the durable store they keep it in.

Declared here, by the layer that needs it; the outbox's store implements `TokenStore` (so a
restart reuses the token instead of spending the platform's small token quota).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class StoredToken:
    """An upstream access token and when it was obtained (UTC unix seconds)."""

    value: str
    obtained_at: float
    expires_in: float

    def age_fraction(self, now: float) -> float:
        """How much of the token's lifetime has passed at wall time `now` (may exceed 1)."""
        return max(0.0, now - self.obtained_at) / self.expires_in


class TokenStore(Protocol):
    async def load_token(self, key: str) -> StoredToken | None:
        """The token saved under `key`, if any."""
        ...

    async def save_token(self, key: str, token: StoredToken) -> None:
        """Durably replace the token under `key`."""
        ...
