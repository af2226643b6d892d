"""The gateway's durable state, behind protocols a PostgreSQL store can implement too."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["Store", "StoredToken", "TokenStore", "open_store"]


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


class Store(TokenStore, Protocol):
    """Everything the gateway keeps durably."""

    async def check_writable(self) -> None:
        """Raise `StoreError` unless a write transaction can be started right now."""
        ...

    async def close(self) -> None: ...


async def open_store(url: str) -> Store:
    """Open (creating and migrating as needed) the store at `url`."""
    from gateway.store.sqlite import SqliteStore

    return await SqliteStore.open(url.removeprefix("sqlite:///"))
