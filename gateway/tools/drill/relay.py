"""A fault relay: a reverse proxy that breaks calls on purpose, for drills against staging.

Against the simulator a drill injects faults through `/_sim/faults`. A real platform's staging
upstream takes no such orders, so the drill puts this relay between the gateway and the upstream
and injects the faults here instead:

    gateway  ->  FaultRelay (127.0.0.1)  ->  https://sandbox.example.cn

Every request is forwarded unchanged (method, path, query, body, end-to-end headers; `Host` is
the target's) and every answer comes back unchanged. Fault rules have the simulator's JSON shape
and window semantics (`gateway.tools.simulator.faults`), limited to what a relay can do on its own:

    refuse                           the relay's listener is closed for the window
    reset, http_error, slow, hang    before forwarding: the target never sees the call (slow:
                                     forwarded after the delay, even if the caller gave up)
    answer_lost, truncate            after forwarding: the target acted, its answer is lost

`busy`, `quota`, `rate_limit` and `token_expiry` need the platform's cooperation and are refused
with a `FaultSpecError`. A target that cannot be reached, or whose answer breaks, shows up as a
reset connection: the relay passes failures through rather than inventing answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, Final

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.clock import Clock, SystemClock
from gateway.headers import HOP_BY_HOP
from gateway.tools.simulator import wire
from gateway.tools.simulator.faults import (
    TOKEN_OPERATION,
    FaultBook,
    FaultKind,
    FaultSpecError,
    Stage,
    parse_fault_rule,
)
from gateway.tools.simulator.wire import Reply

#: The kinds a relay can produce without the platform's cooperation.
RELAYED_KINDS: Final = frozenset(
    {
        FaultKind.REFUSE,
        FaultKind.RESET,
        FaultKind.HTTP_ERROR,
        FaultKind.SLOW,
        FaultKind.HANG,
        FaultKind.ANSWER_LOST,
        FaultKind.TRUNCATE,
    }
)

# aiohttp sets Host (the target's) and the framing; no `Expect`: the relay has the whole body.
_NOT_FORWARDED: Final = frozenset({"host", "content-length", "expect"})
# aiohttp sets framing itself; the body is passed on as received (still compressed, if it was).
_NOT_RETURNED: Final = frozenset({"content-length"})
#: Largest request body the relay accepts; far above any invoice call.
_MAX_BODY: Final = 64 * 1024 * 1024
#: Bounds a target that accepts a connection and then says nothing, so the relay never piles up
#: handlers; generous, since the gateway's own timeouts are what a drill exercises.
_TARGET_TIMEOUT: Final = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=300)
#: Retry delay when the listener's port cannot be bound again after a `refuse` window.
_REBIND_RETRY_S: Final = 0.5

log = structlog.get_logger("gateway.tools.drill")


class FaultRelay:
    """Forwards every call to `target_url` (an http or https base URL) and applies fault rules.

    `start` opens the listener and returns the relay's base URL; point the gateway's upstream at
    it. `clock` decides fault windows and delays; `rng` decides probabilistic faults.
    """

    def __init__(
        self, target_url: str, *, clock: Clock | None = None, rng: random.Random | None = None
    ) -> None:
        target = URL(target_url)
        if target.scheme not in ("http", "https") or not target.host:
            raise ValueError(f"the relay's target must be an http(s) base URL, got {target_url!r}")
        self._target_base = str(target).rstrip("/")
        self._clock = clock or SystemClock()
        self._faults = FaultBook(rng or random.Random())
        self._faults_hit: Counter[str] = Counter()
        self._forwarded = 0
        self._closing = asyncio.Event()
        self._app = web.Application(client_max_size=_MAX_BODY)
        self._app.router.add_route("*", "/{tail:.*}", self._relay)
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.SockSite | None = None
        self._address: tuple[str, int] | None = None
        self._listener_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self._rebind_failed = False

    @property
    def faults_hit(self) -> dict[str, int]:
        """Fired rules per kind (`refuse`: listener closures plus calls dropped during one)."""
        return dict(self._faults_hit)

    @property
    def forwarded(self) -> int:
        """Calls passed on to the target, whether or not its answer reached the caller."""
        return self._forwarded

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Open the listener; returns the relay's base URL, e.g. "http://127.0.0.1:41234"."""
        if self._runner is not None:
            raise RuntimeError("the relay has been started already")
        self._session = aiohttp.ClientSession(
            timeout=_TARGET_TIMEOUT,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            # Send only the headers the caller sent, not aiohttp's defaults.
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )
        self._runner = web.AppRunner(self._app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        sock = socket.create_server((host, port))
        self._address = sock.getsockname()[:2]
        self._site = web.SockSite(self._runner, sock)
        await self._site.start()
        await self._sync_listener()
        self._watcher = asyncio.create_task(self._watch_listener(), name="fault-relay-listener")
        bound_host, bound_port = self._address
        return f"http://{bound_host}:{bound_port}"

    async def add_fault(self, rule: Mapping[str, Any]) -> str:
        """Install a rule in the JSON shape of `/_sim/faults`; returns its id ("f1", ...).

        Raises `FaultSpecError` for an invalid rule, or a kind only the platform can produce.
        """
        parsed = parse_fault_rule(dict(rule), now=self._clock.monotonic())
        if parsed.kind not in RELAYED_KINDS:
            raise FaultSpecError(
                f"{parsed.kind} needs the platform itself: a relay in front of a staging upstream"
                " cannot produce it; run this drill against the simulator"
            )
        rule_id = self._faults.add(parsed)
        await self._faults_changed()
        return rule_id

    async def clear_faults(self) -> None:
        """Remove every rule (a closed listener reopens)."""
        self._faults.clear()
        await self._faults_changed()

    async def close(self) -> None:
        """Close the listener and every connection; calls still held by a fault are cut off."""
        self._closing.set()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
        self._runner = self._site = self._session = None

    async def _relay(self, request: web.Request) -> web.StreamResponse:
        """One call: faults before, the target, faults after."""
        now = self._clock.monotonic()
        if self._faults.refusing(now):
            # Only reachable on a connection accepted just before the listener closed.
            self._faults_hit[FaultKind.REFUSE] += 1
            return wire.reset(request)
        operation = _operation(request)
        before = self._faults.pick(Stage.BEFORE, operation, now)
        if before is not None:
            self._faults_hit[before.kind] += 1
            match before.kind:
                case FaultKind.SLOW:
                    if not await self._pause(before.number("delay_s")):
                        return wire.reset(request)
                case FaultKind.HTTP_ERROR:
                    return wire.send(Reply.http_error(int(before.number("status"))))
                case FaultKind.HANG:
                    await self._pause(before.number("hang_s"))
                    return wire.reset(request)
                case FaultKind.RESET:
                    return wire.reset(request)
                case _:  # pragma: no cover - add_fault admits no other kind before forwarding
                    raise AssertionError(f"{before.kind} is not relayed")

        body = await request.read()
        try:
            status, headers, answer = await self._forward(request, body)
        except (aiohttp.ClientError, TimeoutError):
            # The target was unreachable or broke off: the caller sees a broken connection too.
            return wire.reset(request)

        after = self._faults.pick(Stage.AFTER, operation, self._clock.monotonic())
        if after is None:
            return web.Response(status=status, headers=headers, body=answer)
        self._faults_hit[after.kind] += 1
        if after.kind is FaultKind.TRUNCATE:
            return await _send_truncated(request, status, headers, answer)
        if after.text("mode") == "hang":
            await self._pause(after.number("hang_s"))
        return wire.reset(request)

    async def _forward(
        self, request: web.Request, body: bytes
    ) -> tuple[int, CIMultiDict[str], bytes]:
        """The target's status, end-to-end headers and raw body for this request."""
        assert self._session is not None  # set by start(), before any request can arrive
        # raw_path keeps the query exactly as the caller encoded it (the platform signs it).
        url = URL(self._target_base + request.raw_path, encoded=True)
        self._forwarded += 1
        async with self._session.request(
            request.method,
            url,
            headers=_end_to_end(request.headers, _NOT_FORWARDED),
            data=body or None,
            allow_redirects=False,
        ) as response:
            answer = await response.read()
            return response.status, _end_to_end(response.headers, _NOT_RETURNED), answer

    async def _pause(self, seconds: float) -> bool:
        """Wait on the relay's clock; False if the relay started closing first."""
        if self._closing.is_set():
            return False
        sleeper = asyncio.ensure_future(self._clock.sleep(seconds))
        closer = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait({sleeper, closer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            closer.cancel()
        return not self._closing.is_set()

    async def _faults_changed(self) -> None:
        await self._sync_listener()
        self._wake.set()

    async def _sync_listener(self) -> None:
        """Close or reopen the listener to match the `refuse` rules now (as the simulator does)."""
        async with self._listener_lock:
            runner, address = self._runner, self._address
            if runner is None or address is None:
                return
            refusing = self._faults.refusing(self._clock.monotonic())
            if refusing and self._site is not None:
                site, self._site = self._site, None
                await site.stop()
                # A platform that went down takes its open connections with it; pooled
                # keep-alive connections must not carry on as if nothing had happened.
                if runner.server is not None:
                    for connection in runner.server.connections:
                        if connection.transport is not None:
                            wire.abort(connection.transport)
                self._faults_hit[FaultKind.REFUSE] += 1
            elif not refusing and self._site is None:
                try:
                    # create_server sets SO_REUSEADDR, so the same port can be bound again at once.
                    sock = socket.create_server(address)
                except OSError as exc:
                    self._rebind_failed = True
                    log.warning(
                        "fault relay cannot reopen its port", address=address, error=str(exc)
                    )
                    return
                self._rebind_failed = False
                self._site = web.SockSite(runner, sock)
                await self._site.start()

    async def _watch_listener(self) -> None:
        """Apply `refuse` windows as they open and close; woken early when rules change."""
        while True:
            self._wake.clear()
            await self._sync_listener()
            now = self._clock.monotonic()
            wake_at = self._faults.next_listener_change(now)
            if self._rebind_failed:
                wake_at = now + _REBIND_RETRY_S
            waiters: list[asyncio.Future[object]] = [asyncio.ensure_future(self._wake.wait())]
            if wake_at is not None:
                waiters.append(asyncio.ensure_future(self._clock.sleep(max(0.0, wake_at - now))))
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()


def _operation(request: web.Request) -> str:
    """The operation name fault rules match on, as in the simulator."""
    if request.path.endswith("/accessToken"):
        return TOKEN_OPERATION
    return request.headers.get("method", "")


def _end_to_end(headers: CIMultiDictProxy[str], drop: Iterable[str]) -> CIMultiDict[str]:
    """A copy without hop-by-hop headers (also those named in `Connection`) and `drop`."""
    excluded = set(HOP_BY_HOP) | set(drop)
    for value in headers.getall("Connection", ()):
        excluded.update(token.strip().lower() for token in value.split(","))
    return CIMultiDict(
        (name, value) for name, value in headers.items() if name.lower() not in excluded
    )


async def _send_truncated(
    request: web.Request, status: int, headers: CIMultiDict[str], body: bytes
) -> web.StreamResponse:
    """The target's answer with a `Content-Length` of the whole body but only half of it sent,
    then the connection closed."""
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: len(body) // 2])
    if request.transport is not None:
        request.transport.close()
    return response
