"""Helpers for tests that drive the simulator: a clock that moves only when told, and a way to
build a correctly signed platform call without the gateway."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

from gateway.tools.simulator.platform import PlatformSettings
from gateway.upstream.auth.signature import new_nonce, new_senid, sign

#: 2026-01-01 00:00:00 UTC: a fixed, realistic wall-clock start for manual clocks.
DEFAULT_WALL_START = 1_767_225_600.0


@dataclass
class ManualClock:
    """A `gateway.clock.Clock` that stands still until `advance` moves it; sleepers wake when
    the clock reaches their deadline, never on their own."""

    monotonic_now: float = 1_000.0
    wall_now: float = DEFAULT_WALL_START
    _sleepers: list[tuple[float, asyncio.Future[None]]] = field(default_factory=list)

    def monotonic(self) -> float:
        return self.monotonic_now

    def wall(self) -> float:
        return self.wall_now

    @property
    def sleepers(self) -> int:
        """Sleeps in progress: lets a test wait until something is waiting on this clock."""
        return len(self._sleepers)

    def advance(self, seconds: float) -> None:
        """Move both clocks forward and wake every sleeper that is due."""
        self.monotonic_now += seconds
        self.wall_now += seconds
        for deadline, waiter in list(self._sleepers):
            if deadline <= self.monotonic_now and not waiter.done():
                waiter.set_result(None)

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        entry = (self.monotonic_now + seconds, asyncio.get_running_loop().create_future())
        self._sleepers.append(entry)
        try:
            await entry[1]
        finally:
            self._sleepers.remove(entry)


@dataclass(frozen=True, slots=True)
class SignedCall:
    """Query parameters, headers and body of one call to `/open/v1/services`."""

    params: dict[str, str]
    headers: dict[str, str]
    body: bytes


def signed_call(
    method: str,
    payload: object,
    *,
    token: str,
    wall: float,
    settings: PlatformSettings | None = None,
    app_secret: str | None = None,
    user_tax: str | None = None,
    timestamp: str | None = None,
    senid: str | None = None,
    nonce: str | None = None,
) -> SignedCall:
    """A call signed the way the platform expects. `payload` bytes are sent as they are, anything
    else as JSON; `app_secret`, `user_tax` and `timestamp` override the correct values, to make
    calls the platform must reject; `senid` and `nonce` replace the fresh ones (and are signed)."""
    settings = settings or PlatformSettings()
    if isinstance(payload, bytes):
        body = payload
    else:
        body = json.dumps(payload, ensure_ascii=False).encode()
    senid = senid if senid is not None else new_senid()
    nonce = nonce if nonce is not None else new_nonce()
    stamp = timestamp if timestamp is not None else str(int(wall))
    signature = sign(
        app_secret=app_secret if app_secret is not None else settings.app_secret,
        app_key=settings.app_key,
        senid=senid,
        nonce=nonce,
        timestamp=stamp,
        body=body,
    )
    return SignedCall(
        params={"senid": senid, "nonce": nonce, "timestamp": stamp, "appkey": settings.app_key},
        headers={
            "method": method,
            "accessToken": token,
            "userTax": user_tax if user_tax is not None else settings.user_tax,
            "X-Nuonuo-Sign": signature,
            "Content-Type": "application/json",
        },
        body=body,
    )
