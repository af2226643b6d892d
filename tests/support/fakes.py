"""Fakes for the gateway's plug points: clock, token store."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
from collections import Counter
from collections.abc import Callable
from typing import Any, Union

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config import NuonuoHmacAuthConfig
from gateway.outbox.store import StoredToken
from gateway.upstream.auth.nuonuo import NuonuoHmacAuth
from gateway.upstream.models import UpstreamResponse


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
    """A `TokenStore` in a dict; `saves` counts the saves under each key."""

    def __init__(self) -> None:
        self.tokens: dict[str, StoredToken] = {}
        self.saves: Counter[str] = Counter()
        self._locks: dict[str, asyncio.Lock] = {}

    async def load_token(self, key: str) -> StoredToken | None:
        return self.tokens.get(key)

    async def save_token(self, key: str, token: StoredToken) -> None:
        self.saves[key] += 1
        self.tokens[key] = token

    def exclusive(self, name: str) -> contextlib.AbstractAsyncContextManager[None]:
        # Every user of this store object stands for a replica sharing one database.
        return self._locks.setdefault(name, asyncio.Lock())


class FakeAuth:
    """Records credential renewals and refused clocks; `clock_learned` says whether a refused
    clock is corrected (a resend worthwhile)."""

    def __init__(self) -> None:
        self.renewals = 0
        self.clock_rejections = 0
        self.clock_learned = True
        self.clock_offset = 0.0

    async def prepare(self, request: Any) -> Any:
        return request

    async def credentials_rejected(self, request: Any) -> None:
        self.renewals += 1

    async def clock_rejected(self, response: Any) -> bool:
        self.clock_rejections += 1
        return self.clock_learned


Reply = Union["UpstreamResponse", Exception, Callable[[], Any]]


class ScriptedUpstream:
    """A fake transport answering from a script: responses, errors to raise, or callables.

    Each call takes the next entry (the last one repeats); `duration` seconds pass on the
    fake clock per call, as if the platform took that long.
    """

    def __init__(self, clock: FakeClock, script: list[Any], *, duration: float = 0.01) -> None:
        self.auth = FakeAuth()
        self._clock = clock
        self._script = list(script)
        self._duration = duration
        self.calls: list[float | None] = []

    async def send(self, request: Any, *, time_limit: float | None = None) -> Any:
        self.calls.append(time_limit)
        entry = self._script[min(len(self.calls) - 1, len(self._script) - 1)]
        spent = self._duration if time_limit is None else min(self._duration, time_limit)
        self._clock.advance(spent)
        await asyncio.sleep(0)
        if callable(entry):
            entry = entry()
        if isinstance(entry, Exception):
            raise entry
        return entry


def platform_answer(
    body: Any = None,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
    request: Any = None,
) -> UpstreamResponse:
    """An `UpstreamResponse` as the platform would send it."""
    raw = json.dumps({"code": "E0000"} if body is None else body).encode()
    head = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json", **(headers or {})}))
    return UpstreamResponse(status=status, headers=head, body=raw, request=request)


class ManualClock(FakeClock):
    """A `FakeClock` whose `sleep` waits until `advance` moves time past its end.

    For code that runs in the background (the dispatcher's loop): with `FakeClock` its idle
    waits would return at once and spin; here they wait until the test moves time on.
    """

    def __init__(self, wall: float = 1_800_000_000.0) -> None:
        super().__init__(wall)
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (self.monotonic() + seconds, waiter)
        self._sleepers.append(entry)
        try:
            await waiter
        finally:
            if entry in self._sleepers:
                self._sleepers.remove(entry)

    def advance(self, seconds: float) -> None:
        super().advance(seconds)
        now = self.monotonic()
        for deadline, waiter in list(self._sleepers):
            if deadline <= now and not waiter.done():
                waiter.set_result(None)


class HandlerUpstream:
    """A fake transport that answers each request with `handler(request)`.

    Like httpx's `MockTransport`: the handler returns a response, an exception to raise, or an
    awaitable of either (to hold a request in flight). Each request is first prepared by `auth`
    (signed, as the real client does), and recorded as sent in `requests`, with the clock's
    monotonic time in `sent_at`.
    """

    def __init__(
        self,
        clock: FakeClock,
        handler: Callable[[Any], Any],
        *,
        auth: Any = None,
        duration: float = 0.0,
    ) -> None:
        self.auth = auth if auth is not None else FakeAuth()
        self._clock = clock
        self._handler = handler
        self._duration = duration
        self.requests: list[Any] = []
        self.sent_at: list[float] = []
        self.in_flight = 0
        self.max_in_flight = 0

    def sent(self, method: str) -> list[Any]:
        """The requests sent with this `method` header (the operation, on the reference API)."""
        return [r for r in self.requests if r.headers.get("method") == method]

    async def send(self, request: Any, *, time_limit: float | None = None) -> Any:
        signed = await self.auth.prepare(request)
        self.requests.append(signed)
        self.sent_at.append(self._clock.monotonic())
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self._duration:
                spent = self._duration if time_limit is None else min(self._duration, time_limit)
                self._clock.advance(spent)
            await asyncio.sleep(0)
            reply = self._handler(signed)
            if inspect.isawaitable(reply):
                reply = await reply
            if isinstance(reply, Exception):
                raise reply
            return reply
        finally:
            self.in_flight -= 1


def signing_auth(
    clock: FakeClock, session: aiohttp.ClientSession, *, token: str = "token"
) -> NuonuoHmacAuth:
    """The real nuonuo-hmac scheme, holding a valid `token` (so it never calls the endpoint)."""
    env = {"K": "the-app-key", "S": "the-app-secret", "T": "91110000000000000X"}
    config = NuonuoHmacAuthConfig.model_validate(
        {
            "scheme": "nuonuo-hmac",
            "app_key": {"env": "K"},
            "app_secret": {"env": "S"},
            "user_tax": {"env": "T"},
        }
    )
    for ref in (config.app_key, config.app_secret, config.user_tax):
        assert ref.resolve(env) is None
    tokens = MemoryTokenStore()
    tokens.tokens["nuonuo-hmac:the-app-key"] = StoredToken(token, clock.wall(), 86400)
    return NuonuoHmacAuth(
        config, base_url="http://127.0.0.1:9", session=session, tokens=tokens, clock=clock
    )
