"""Fakes for the gateway's plug points: clock, token store."""

from __future__ import annotations

import asyncio

from gateway.store import StoredToken


class FakeClock:
    """A clock that only moves when told; `sleep` advances it and records the wait."""

    def __init__(self, wall: float = 1_800_000_000.0) -> None:
        self._wall = wall
        self._monotonic = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self._monotonic

    def wall(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        self._wall += seconds
        self._monotonic += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)
        await asyncio.sleep(0)


class MemoryTokenStore:
    def __init__(self) -> None:
        self.tokens: dict[str, StoredToken] = {}
        self.saves = 0

    async def load_token(self, key: str) -> StoredToken | None:
        return self.tokens.get(key)

    async def save_token(self, key: str, token: StoredToken) -> None:
        self.saves += 1
        self.tokens[key] = token
