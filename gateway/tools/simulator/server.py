"""Assembly and lifecycle: the aiohttp apps, the listeners, and `refuse` opening and closing them.

In-process (tests): serve `Simulator.app` with aiohttp's `TestServer`; there `refuse` can only
reset calls. On real listeners (`Simulator.start`): `refuse` closes the API listening socket, so
clients get ECONNREFUSED, aborts open connections, and reopens the socket on the same port when
the window ends or the rule is deleted. The control listener stays up throughout. The token
endpoint may have a listener of its own (`own_token_host`), as the real platform serves tokens
from another host than its API; `refuse` leaves it open, but cuts off the calls it gets (the
platform is down).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import sys
from types import TracebackType
from typing import Final

from aiohttp import web

from gateway.clock import Clock, SystemClock
from gateway.tools.simulator import wire
from gateway.tools.simulator.control import ControlApi
from gateway.tools.simulator.faults import FaultKind
from gateway.tools.simulator.platform import Platform, PlatformSettings
from gateway.tools.simulator.scenarios import parse_scenario, scenario_rules

HostPort = tuple[str, int]

#: Pending connections the kernel queues per listener; load tests open many at once.
_BACKLOG: Final = 1024
#: Retry delay when the API port cannot be bound again after a `refuse` window.
_REBIND_RETRY_S: Final = 0.5


class Simulator:
    """The simulated platform with its apps: `app` serves the API and `/_sim/*`, `control_app`
    serves `/_sim/*` only, and `token_app` the token endpoint (on a listener of its own only
    with `own_token_host`; otherwise `app` serves it too). Build it with `build_simulator`."""

    def __init__(self, platform: Platform, *, own_token_host: bool = False) -> None:
        self.platform = platform
        self.own_token_host = own_token_host
        control = ControlApi(platform, on_faults_changed=self.faults_changed)
        self.app = web.Application()
        self.app.add_routes(platform.routes(own_token_host=own_token_host))
        self.app.add_routes(control.routes())
        self.app.on_shutdown.append(self._on_shutdown)
        self.control_app = web.Application()
        self.control_app.add_routes(control.routes())
        self.token_app = web.Application()
        self.token_app.add_routes(platform.token_routes())
        self._api_runner: web.AppRunner | None = None
        self._control_runner: web.AppRunner | None = None
        self._token_runner: web.AppRunner | None = None
        self._token_address: HostPort | None = None
        self._api_site: web.SockSite | None = None
        self._api_address: HostPort | None = None
        self._control_address: HostPort | None = None
        self._listener_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self._rebind_failed = False

    @property
    def api_address(self) -> HostPort:
        """Where the API listens (the real port when started with port 0)."""
        if self._api_address is None:
            raise RuntimeError("the simulator has not been started")
        return self._api_address

    @property
    def control_address(self) -> HostPort | None:
        """Where the control listener listens, if there is one."""
        return self._control_address

    @property
    def token_address(self) -> HostPort | None:
        """Where the token listener listens, if there is one."""
        return self._token_address

    @property
    def api_listening(self) -> bool:
        """False while a `refuse` window has the API listener closed."""
        return self._api_site is not None

    async def start(
        self,
        listen: HostPort = ("127.0.0.1", 0),
        control_listen: HostPort | None = None,
        token_listen: HostPort | None = None,
    ) -> None:
        """Open the API listener (and the control and token listeners, if given; the token
        listener only with `own_token_host`). Raises OSError when a port cannot be bound."""
        if (token_listen is not None) != self.own_token_host:
            raise ValueError("a token listener goes with own_token_host, and only with it")
        api_runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=5.0)
        await api_runner.setup()
        self._api_runner = api_runner
        sock = _listening_socket(listen)
        self._api_address = sock.getsockname()[:2]
        self._api_site = web.SockSite(api_runner, sock, backlog=_BACKLOG)
        await self._api_site.start()
        if control_listen is not None:
            control_runner = web.AppRunner(self.control_app, access_log=None, shutdown_timeout=5.0)
            await control_runner.setup()
            self._control_runner = control_runner
            control_sock = _listening_socket(control_listen)
            self._control_address = control_sock.getsockname()[:2]
            await web.SockSite(control_runner, control_sock, backlog=_BACKLOG).start()
        if token_listen is not None:
            token_runner = web.AppRunner(self.token_app, access_log=None, shutdown_timeout=5.0)
            await token_runner.setup()
            self._token_runner = token_runner
            token_sock = _listening_socket(token_listen)
            self._token_address = token_sock.getsockname()[:2]
            await web.SockSite(token_runner, token_sock, backlog=_BACKLOG).start()
        await self.sync_listener()
        self._watcher = asyncio.create_task(self._watch_listener(), name="simulator-listener")

    async def stop(self) -> None:
        """Close every listener and connection; hanging calls are cut off."""
        self.platform.closing.set()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        for runner in (self._control_runner, self._token_runner, self._api_runner):
            if runner is not None:
                await runner.cleanup()
        self._api_runner = self._control_runner = self._token_runner = self._api_site = None

    async def __aenter__(self) -> Simulator:
        if self._api_runner is None:
            await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def faults_changed(self) -> None:
        """Apply a change of fault rules to the listener now, and reschedule the watcher."""
        await self.sync_listener()
        self._wake.set()

    async def sync_listener(self) -> None:
        """Close or reopen the API listener to match the `refuse` rules at this moment.

        A background task does this at every window boundary; tests on a manual clock call it
        after advancing the clock.
        """
        async with self._listener_lock:
            runner, address = self._api_runner, self._api_address
            if runner is None or address is None:
                return
            refusing = self.platform.faults.refusing(self.platform.clock.monotonic())
            if refusing and self._api_site is not None:
                site, self._api_site = self._api_site, None
                await site.stop()
                # A crashed platform takes its open connections with it; otherwise pooled
                # keep-alive connections would carry on as if nothing had happened.
                if runner.server is not None:
                    for connection in runner.server.connections:
                        if connection.transport is not None:
                            wire.abort(connection.transport)
                self.platform.counters.faults_hit[FaultKind.REFUSE] += 1
            elif not refusing and self._api_site is None:
                try:
                    sock = _listening_socket(address)
                except OSError as exc:
                    self._rebind_failed = True
                    print(f"simulator: cannot reopen {address}: {exc}; retrying", file=sys.stderr)
                    return
                self._rebind_failed = False
                site = web.SockSite(runner, sock, backlog=_BACKLOG)
                await site.start()
                self._api_site = site

    async def _watch_listener(self) -> None:
        clock = self.platform.clock
        while True:
            self._wake.clear()
            await self.sync_listener()
            now = clock.monotonic()
            wake_at = self.platform.faults.next_listener_change(now)
            if self._rebind_failed:
                wake_at = now + _REBIND_RETRY_S
            waiters: list[asyncio.Future[object]] = [asyncio.ensure_future(self._wake.wait())]
            if wake_at is not None:
                waiters.append(asyncio.ensure_future(clock.sleep(max(0.0, wake_at - now))))
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()

    async def _on_shutdown(self, app: web.Application) -> None:
        self.platform.closing.set()


def build_simulator(
    settings: PlatformSettings | None = None,
    *,
    clock: Clock | None = None,
    rng: random.Random | None = None,
    scenario: str | None = None,
    own_token_host: bool = False,
) -> Simulator:
    """A simulator ready to serve in-process (`.app`) or on listeners (`await .start(...)`).

    `own_token_host`: the token endpoint only on a listener of its own (`token_app`), the API
    answering a token request 404.

    `scenario` is a named scenario as given to `--scenario` (e.g. "outage:after=5,down=30");
    its windows count from now. `rng` decides probabilistic faults (seed it for repeatable runs).
    Raises `ScenarioError` for an unknown scenario or parameter.
    """
    platform = Platform(
        settings or PlatformSettings(), clock=clock or SystemClock(), rng=rng or random.Random()
    )
    if scenario is not None:
        name, overrides = parse_scenario(scenario)
        for spec in scenario_rules(name, overrides):
            platform.add_fault(spec)
    return Simulator(platform, own_token_host=own_token_host)


def _listening_socket(address: HostPort) -> socket.socket:
    host, port = address
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    # create_server sets SO_REUSEADDR, so the port can be bound again right after a `refuse`.
    return socket.create_server((host, port), family=family, backlog=_BACKLOG)
