"""The platform access token as the auth schemes keep it, and the durable store they keep it in.

Declared here, by the layer that needs it; the outbox's store implements `TokenStore` (so a
restart reuses the token instead of spending the platform's small token quota).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
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

    def exclusive(self, name: str) -> AbstractAsyncContextManager[None]:
        """Hold the lock `name` for the block, against every process using this store.

        A token refresh runs under its key's lock: of replicas sharing a database, one asks
        the platform while the others wait, then read the token it saved (the platform's token
        quota is per application, not per replica). The embedded store has one process: an
        in-process lock serves. Never held across more than one refresh.
        """
        ...
