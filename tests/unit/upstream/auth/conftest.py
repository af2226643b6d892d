"""What the auth tests share: a client session."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """One aiohttp client session, closed after the test."""
    async with aiohttp.ClientSession() as s:
        yield s
