"""Assembly of the running gateway: its dependencies, its listeners, its lifecycle."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import secrets
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NoReturn

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import Counter
from pydantic import BaseModel

from gateway import __version__
from gateway.clock import Clock, DatabaseClock, Periodic, SteadyClock, SystemClock
from gateway.config import GatewayConfig, ShutdownConfig, load_config
from gateway.edge.intake import STATUS_PATH, Intake
from gateway.edge.limits import TenantLimiter
from gateway.edge.listener import GatedTCPSite, runner_args
from gateway.edge.platform_answers import PlatformAnswers
from gateway.edge.proxy import Proxy
from gateway.edge.sdk import SdkGate
from gateway.edge.tenants import TenantDirectory
from gateway.errors import ConfigError
from gateway.operations import Classifier, JsonLimits
from gateway.ops.health import Health
from gateway.ops.logs import set_log_level
from gateway.ops.metrics import GatewayCollector, Metrics, OutboxSampler
from gateway.ops.service_manager import ServiceManager
from gateway.ops.status import StatusPage
from gateway.outbox.callbacks import CallbackSender, CallbackTarget
from gateway.outbox.dispatcher import Dispatcher
from gateway.outbox.issuance import IssuanceFollower
from gateway.outbox.oncall import OnCall
from gateway.outbox.store import Store, masked_url, open_store
from gateway.outbox.wakeups import Wakeups
from gateway.resilience.breaker import BreakerRegistry, CircuitState
from gateway.resilience.failover import Endpoint, Failover
from gateway.resilience.failures import Verdict
from gateway.resilience.pipeline import ResiliencePipeline
from gateway.resilience.probe import HealthProbe, UpstreamHealth
from gateway.resilience.retry import Backoff
from gateway.upstream.auth import UpstreamAuth, build_auth
from gateway.upstream.client import MarkingConnector, UpstreamClient
from gateway.upstream.models import UpstreamRequest

log = structlog.get_logger("gateway")


@dataclass
class Gateway:
    """The running gateway's parts; built by `open_gateway`, passed to whatever needs them."""

    config: GatewayConfig
    clock: Clock
    store: Store
    session: aiohttp.ClientSession
    auth: UpstreamAuth
    upstream: UpstreamClient
    pipeline: ResiliencePipeline
    breakers: BreakerRegistry
    health: UpstreamHealth
    dispatcher: Dispatcher
    issuance: IssuanceFollower
    callbacks: CallbackSender
    oncall: OnCall
    intake: Intake
    proxy: Proxy
    metrics: Metrics
    started_at: float
    status_page: StatusPage
    #: The backup endpoint (`upstream.backup_url`) and its breakers; None: no failover.
    failover: Failover | None = None
    #: Vendor-SDK clients' tokens and signed calls (edge/sdk.py); None: not wired.
    sdk: SdkGate | None = None

    @property
    def reads_endpoint(self) -> Endpoint:
        """Which endpoint serves reads now: `backup` while the primary is down or its circuit
        is open and a backup is configured, else `primary`."""
        return Endpoint.PRIMARY if self.failover is None else self.failover.serving_reads()


@asynccontextmanager
async def open_gateway(config: GatewayConfig, clock: Clock | None = None) -> AsyncIterator[Gateway]:
    """Open the store and the upstream connection pool; close both on exit."""
    clock = clock or SystemClock()
    store = await open_store(config.store_url, config.outbox, config.store)
    upstream_config = config.upstream
    session = aiohttp.ClientSession(
        connector=MarkingConnector(limit=upstream_config.pool_size, ttl_dns_cache=60),
        auto_decompress=True,
        skip_auto_headers=("User-Agent",),
    )
    probe: HealthProbe | None = None
    resync: Periodic | None = None
    wakeups: Wakeups | None = None
    dispatcher: Dispatcher | None = None
    follower: IssuanceFollower | None = None
    callbacks: CallbackSender | None = None
    # Callbacks go to the tenants' own systems: a pool apart from the platform's.
    callback_session = aiohttp.ClientSession(skip_auto_headers=("User-Agent",))
    sampler: OutboxSampler | None = None
    status_page: StatusPage | None = None
    tenants: TenantDirectory | None = None
    try:
        auth = build_auth(
            upstream_config.auth,
            base_url=upstream_config.url,
            session=session,
            tokens=store,
            clock=clock,
            tenants=config.tenants,
        )
        # Before anything is sent: a hold on token calls recorded by an earlier run applies now.
        await auth.load()
        upstream = UpstreamClient.from_config(session, upstream_config, auth)
        metrics = Metrics(
            operations=[op.name for op in config.operations],
            business_codes=config.upstream.business_codes.listed(),
            followed=[op.name for op in config.operations if op.issuance is not None],
        )
        store.observe_commits(metrics.commit)
        breakers = BreakerRegistry(config.resilience.breaker, clock)
        breakers.add_listener(metrics.transition)
        health = UpstreamHealth(clock)
        failover = _failover(config, session, auth, breakers, health, clock)
        if failover is not None:
            failover.breakers.add_listener(metrics.transition)
        pipeline = ResiliencePipeline.from_config(
            config, upstream=upstream, breakers=breakers, clock=clock, failover=failover
        )
        pipeline.observer = metrics
        probe = _health_probe(config, pipeline, breakers, health, clock)
        owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        # Outbox schedules (back-off, leases, ages) run on a clock that steps cannot move: the
        # host's on the embedded store, the database's when replicas share one.
        steady, resync = await _outbox_clock(store, clock)
        await _recover(store, steady)
        dispatcher = Dispatcher.from_config(
            config,
            store=store,
            pipeline=pipeline,
            breakers=breakers,
            clock=steady,
            owner=f"{owner}:dispatcher",
        )
        # Work for the dispatchers: this one at once, every replica's through the store.
        wakeups = Wakeups(store, dispatcher.wake)
        store.on_announcement(dispatcher.wake)
        follower = IssuanceFollower.from_config(
            config, store=store, pipeline=pipeline, bucket=dispatcher.bucket, clock=steady
        )
        callbacks = CallbackSender(
            queue=store.callbacks,
            submissions=store,
            session=callback_session,
            targets=CallbackTarget.of_tenants(config.tenants),
            config=config.callbacks,
            clock=steady,
            owner=f"{owner}:callbacks",
            retention=config.outbox.retention,
            sweep_interval=config.outbox.sweep_interval,
        )
        intake = Intake(
            store=store,
            pipeline=pipeline,
            breakers=breakers,
            clock=steady,
            owner=owner,
            lease_seconds=config.outbox.lease,
            backoff=Backoff.from_config(config.outbox.backoff),
            wake_dispatcher=wakeups.wake,
        )

        def wake_on_recovery(_name: str, _old: CircuitState, new: CircuitState, _why: str) -> None:
            # Start draining the moment the circuit lets traffic through, not at the next poll.
            if new in (CircuitState.CLOSED, CircuitState.HALF_OPEN, CircuitState.FORCED_CLOSED):
                wakeups.wake()

        breakers.add_listener(wake_on_recovery)
        oncall = OnCall(
            store=store,
            clock=steady,
            wake_dispatcher=wakeups.wake,
            protected_pointers={
                op.name: tuple(p for p in (op.business_key, op.ordering_key) if p is not None)
                for op in config.operations
            },
        )
        # Managed tenant keys live in the store: read now, then every few seconds.
        tenants = TenantDirectory(config.tenants, keys=store, clock=clock)
        await tenants.refresh()
        limited = Counter(
            "gateway_tenant_limited_total",
            "Requests refused because their tenant was over one of its limits.",
            ["tenant", "limit"],
            registry=metrics.registry,
        )
        # Vendor-SDK clients: their tokens are signed under a per-install key kept in the store.
        sdk = SdkGate(config.tenants, store=store, clock=clock)
        proxy = Proxy(
            tenants=tenants,
            sdk=sdk,
            answers=PlatformAnswers(config.operations, store=store, pipeline=pipeline),
            limits=TenantLimiter(
                config.tenants,
                config.limits.tenant,
                clock,
                lambda tenant, limit: limited.labels(tenant, limit).inc(),
            ),
            classifier=Classifier.from_config(config.operations, unmatched=config.unmatched),
            pipeline=pipeline,
            intake=intake,
            store=store,
            max_body_bytes=config.limits.max_body_bytes,
            json_limits=JsonLimits(config.limits.max_json_depth, config.limits.max_json_values),
            read_timeout=config.limits.read_timeout,
            observer=metrics,
        )
        tenants.start()
        if probe is not None:
            probe.start()
        if resync is not None:
            resync.start()
        dispatcher.start()
        follower.start()
        callbacks.start()
        sampler = OutboxSampler(metrics, store, steady, interval=2.0)
        sampler.start()
        started_at = clock.wall()
        status_page = StatusPage(
            outbox=store,
            breakers=breakers,
            health=health,
            dispatcher=dispatcher,
            metrics=metrics,
            started_at=started_at,
            clock=clock,
            audit=store,
            reads_endpoint=(
                (lambda: failover.serving_reads().value) if failover is not None else None
            ),
        )
        status_page.start()
        gateway = Gateway(
            config=config,
            clock=clock,
            store=store,
            session=session,
            auth=auth,
            upstream=upstream,
            pipeline=pipeline,
            breakers=breakers,
            health=health,
            dispatcher=dispatcher,
            issuance=follower,
            callbacks=callbacks,
            oncall=oncall,
            intake=intake,
            proxy=proxy,
            metrics=metrics,
            started_at=started_at,
            status_page=status_page,
            failover=failover,
            sdk=sdk,
        )
        metrics.registry.register(GatewayCollector(gateway))
        yield gateway
    finally:
        if status_page is not None:
            await status_page.stop()
        if sampler is not None:
            await sampler.stop()
        if follower is not None:
            await follower.stop()
        if callbacks is not None:
            await callbacks.stop()
        if dispatcher is not None:
            await dispatcher.stop()
        if probe is not None:
            await probe.stop()
        if tenants is not None:
            await tenants.stop()
        if resync is not None:
            await resync.stop()
        if wakeups is not None:
            await wakeups.close()
        await session.close()
        await callback_session.close()
        await store.close()


async def _outbox_clock(store: Store, clock: Clock) -> tuple[Clock, Periodic | None]:
    """The clock the outbox schedules by, and what keeps it in step (None: nothing needs to).

    The embedded store: the host's wall clock at start, then monotonic time (`SteadyClock`).
    A store replicas share: the database's clock (`DatabaseClock`), read again every minute,
    so leases taken on one host expire on another at the same moment.
    """
    if store.single_node:
        return SteadyClock(clock), None
    shared = await DatabaseClock.anchored(clock, store.database_time)
    log.info(
        "scheduling by the database's clock",
        host_minus_database=round(clock.wall() - shared.wall(), 3),
    )

    async def resync() -> None:
        correction = await shared.resync()
        if abs(correction) > 0.5:
            log.warning("the database's clock moved against this host's", seconds=correction)

    periodic = Periodic(
        "database-clock",
        resync,
        interval=60.0,
        clock=clock,
        failure="cannot read the database's clock; scheduling by the last reading",
    )
    return shared, periodic


async def _recover(store: Store, clock: Clock) -> None:
    """Take up what a previous run left: in-flight rows, a clock that stepped back.

    What was left `delivering` may have been sent: it becomes `unknown` and is reconciled
    before anything is resent. The embedded store has one process, so every such row is a
    previous run's; replicas sharing a store leave live replicas' leases alone and take only
    expired ones (the dispatcher's sweep takes the rest as they expire).
    """
    reclaimed = await store.reclaim(now=clock.wall(), everything=store.single_node)
    if reclaimed:
        log.warning(
            "submissions left in flight by a stopped gateway will be reconciled", count=reclaimed
        )
    if not store.single_node:
        return  # one replica's clock behind the others' is not a step to undo
    shift = await store.rebase(now=clock.wall())
    if shift:
        log.warning(
            "the clock is behind the outbox's last writes (it stepped back while the gateway "
            "was down); waiting submissions rescheduled by as much",
            seconds=round(shift, 1),
        )


def _failover(
    config: GatewayConfig,
    session: aiohttp.ClientSession,
    auth: UpstreamAuth,
    primary: BreakerRegistry,
    health: UpstreamHealth,
    clock: Clock,
) -> Failover | None:
    """The backup endpoint, when `upstream.backup_url` is set: the same pool and the same auth
    (the same platform: same credentials, same token), breakers of its own."""
    upstream = config.upstream
    if upstream.backup_url is None:
        return None
    return Failover(
        upstream=UpstreamClient.from_config(session, upstream, auth, base_url=upstream.backup_url),
        breakers=BreakerRegistry(config.resilience.breaker, clock, prefix="backup:"),
        primary=primary,
        health=health,
        reads=[op.name for op in config.operations if op.kind == "read"],
        submissions=[op.name for op in config.operations if op.failover == "submissions"],
    )


def _health_probe(
    config: GatewayConfig,
    pipeline: ResiliencePipeline,
    breakers: BreakerRegistry,
    health: UpstreamHealth,
    clock: Clock,
) -> HealthProbe | None:
    """The configured probe: its operation's method, path and headers, with the probe body."""
    probe = config.resilience.probe
    if probe is None:
        return None
    operation = next(op for op in config.operations if op.name == probe.operation)
    match = operation.match
    request = UpstreamRequest(
        method=match.method or "POST",
        path=(match.path or "/").rstrip("*"),
        query=(),
        headers=CIMultiDict({**match.headers, "Content-Type": "application/json"}),
        body=json.dumps(probe.body, ensure_ascii=False).encode(),
        operation=operation.name,
    )

    read = operation.kind == "read"

    async def send() -> Verdict:
        return await pipeline.send_once(request, time_limit=probe.timeout, read=read)

    return HealthProbe(probe, send, breakers, health, clock)


#: The exit status of a stop cut short (a second signal, or the grace period ran out).
FORCED_EXIT: Final = 1

#: The client listener's `Health` (`serve` marks it stopping at SIGTERM).
HEALTH = web.AppKey("health", Health)


def client_app(gateway: Gateway) -> web.Application:
    """The client listener: health, then everything else proxied."""
    app = web.Application(client_max_size=gateway.config.limits.max_body_bytes + 1)
    health = app[HEALTH] = Health(gateway.store)
    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/readyz", health.readyz)
    app.router.add_get(STATUS_PATH, gateway.proxy.submission_status)
    app.router.add_get("/status", gateway.status_page.handle)
    app.router.add_get("/status/feed.json", gateway.status_page.feed)
    if gateway.sdk is not None:
        # The platform's token endpoint, for vendor-SDK clients (docs/sdk-clients.md).
        app.router.add_post("/accessToken", gateway.sdk.token_endpoint)
    app.router.add_route("*", "/{tail:.*}", gateway.proxy.handle)
    return app


def _split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


async def serve(
    config: GatewayConfig,
    *,
    stop: asyncio.Event | None = None,
    config_path: str | Path | None = None,
    service_manager: ServiceManager | None = None,
) -> None:
    """Run the gateway until SIGTERM/SIGINT (or `stop` is set), then stop gracefully.

    Stopping: `/readyz` fails at once; requests are still served for `shutdown.drain_delay`;
    then the listener closes, and the requests and deliveries in flight finish — all within
    `shutdown.grace_period` of the signal. A second signal, or the grace period running out,
    ends the process at once (`force_exit`): every acknowledged submission is on disk already,
    and a delivery cut off is reconciled by whoever takes it up. SIGHUP reloads
    `config_path` (`reload_config`). The service manager (systemd, `$NOTIFY_SOCKET`) is told
    when the gateway is ready, reloading and stopping.
    """
    stop = stop or asyncio.Event()
    manager = service_manager or ServiceManager.from_environment()
    loop = asyncio.get_running_loop()
    grace = config.shutdown.grace_period

    def on_signal(signum: signal.Signals) -> None:
        if stop.is_set():
            force_exit(f"a second {signum.name}")
        manager.stopping(f"stopping ({signum.name}): finishing what is in flight")
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    from gateway.ops.admin import admin_app  # the admin package needs this module's `Gateway`

    async with open_gateway(config) as gateway:
        running = config
        reloads: set[asyncio.Task[None]] = set()

        async def reload() -> None:
            nonlocal running
            if config_path is None:
                log.warning("SIGHUP: no configuration file to reload (started without one)")
                return
            manager.reloading()
            try:
                running = reload_config(gateway, running, Path(config_path))
            finally:
                manager.ready(_serving(running))

        def on_hangup() -> None:
            task = loop.create_task(reload(), name="reload")
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hangup)
        app = client_app(gateway)
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=grace,
            **runner_args(config.limits),
        )
        admin_runner = web.AppRunner(admin_app(gateway), access_log=None, handle_signals=False)
        await runner.setup()
        await admin_runner.setup()
        host, port = _split_listen(config.listen)
        admin_host, admin_port = _split_listen(config.admin.listen)
        site = GatedTCPSite(runner, host, port, max_connections=config.limits.max_connections)
        admin_site = web.TCPSite(admin_runner, admin_host, admin_port, reuse_address=True)
        try:
            # The admin listener first: once clients are served, on-call can act.
            await admin_site.start()
            log.info(
                "admin listening",
                listen=config.admin.listen,
                tokens=len(config.admin.tokens),
            )
            if not _loopback(admin_host):
                log.warning(
                    "the admin listener is reachable from other hosts; bind admin.listen to "
                    "127.0.0.1 unless a firewall or proxy guards it",
                    listen=config.admin.listen,
                )
            await site.start()
            log.info(
                "gateway listening",
                listen=config.listen,
                upstream=config.upstream.url,
                store=masked_url(config.store_url),
                version=__version__,
            )
            manager.ready(_serving(config))
            await stop.wait()
        except BaseException:
            await runner.cleanup()
            await admin_runner.cleanup()
            raise
        await _stop_gracefully(gateway, app[HEALTH], runner, admin_runner, config.shutdown)


def _serving(config: GatewayConfig) -> str:
    """The status line the service manager shows (`systemctl status`)."""
    tenants = len(config.tenants)
    return f"serving on {config.listen} (admin {config.admin.listen}), {tenants} tenants"


#: Seconds of the grace period kept for handing back deliveries cut off at the stop.
HAND_BACK_RESERVE: Final = 1.0


async def _stop_gracefully(
    gateway: Gateway,
    health: Health,
    runner: web.AppRunner,
    admin_runner: web.AppRunner,
    shutdown: ShutdownConfig,
) -> None:
    """The graceful part of `serve`, from the first signal to the store's closing."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + shutdown.grace_period
    # Whatever is still running when the grace period ends is cut off.
    cutoff = loop.call_at(deadline, force_exit, "the grace period ran out")
    try:
        health.stopping = True
        log.info(
            "gateway stopping: /readyz fails from now on; finishing what is in flight",
            drain_delay_s=shutdown.drain_delay,
            grace_period_s=shutdown.grace_period,
        )
        if shutdown.drain_delay:
            await asyncio.sleep(shutdown.drain_delay)
        # The listener closes and the requests in flight finish, while deliveries in flight
        # finish too (no new ones are claimed); those still out when the grace period is
        # nearly over are handed back, and the other replicas told.
        reserve = min(HAND_BACK_RESERVE, shutdown.grace_period / 10)
        _, cut_off = await asyncio.gather(
            runner.cleanup(),
            gateway.dispatcher.stop(grace=max(0.0, deadline - reserve - loop.time())),
        )
        if cut_off:
            await gateway.store.announce()
        await admin_runner.cleanup()
    finally:
        cutoff.cancel()
    log.info("gateway stopped", seconds=round(loop.time() - started, 3))


#: What a reload (SIGHUP) applies; any other change waits for a restart.
RELOADED: Final = ("tenants", "limits.tenant", "log.level", "upstream.business_codes")


def reload_config(gateway: Gateway, running: GatewayConfig, path: Path) -> GatewayConfig:
    """Read `path` again and apply what can change safely while serving — the tenants, their
    keys and their limits, the log level, what business codes mean; log what was applied and
    what waits for a restart. A file with problems changes nothing (they are logged). Returns
    the configuration now in force."""
    try:
        new = load_config(path)
    except ConfigError as exc:
        log.error(
            "configuration not reloaded: the file has problems; the running one stays",
            path=str(path),
            problems=exc.problems,
        )
        return running
    gateway.proxy.reconfigure_tenants(new.tenants, new.limits.tenant)
    gateway.callbacks.retarget(CallbackTarget.of_tenants(new.tenants))
    set_log_level(new.log.level)
    codes = new.upstream.business_codes
    gateway.pipeline.reclassify(codes)
    gateway.metrics.label_codes(codes.listed())
    log.warning(  # whatever the new level, this line is written
        "configuration reloaded",
        path=str(path),
        applied=list(RELOADED),
        tenants=[tenant.id for tenant in new.tenants],
        log_level=new.log.level,
    )
    waiting = _needs_restart(running, new)
    if waiting:
        log.warning("configuration changes that take effect only after a restart", settings=waiting)
    return _with_reloaded(running, new)


def _with_reloaded(running: GatewayConfig, new: GatewayConfig) -> GatewayConfig:
    """`running` with the `RELOADED` settings taken from `new`."""
    updates: dict[str, object] = {}
    for path in RELOADED:
        key, _, sub = path.partition(".")
        if not sub:
            updates[key] = getattr(new, key)
            continue
        section = updates.get(key, getattr(running, key))
        assert isinstance(section, BaseModel)
        updates[key] = section.model_copy(update={sub: getattr(getattr(new, key), sub)})
    return running.model_copy(update=updates)


def _needs_restart(running: GatewayConfig, new: GatewayConfig) -> list[str]:
    """The settings (top-level keys, or `key.sub` where part of a key reloads) that differ but
    a reload does not apply."""
    before, after = running.model_dump(), new.model_dump()
    changed: list[str] = []
    for key, value in after.items():
        if key in RELOADED:
            continue
        reloaded = {path.split(".", 1)[1] for path in RELOADED if path.startswith(f"{key}.")}
        if reloaded:
            changed += [
                f"{key}.{sub}"
                for sub in value
                if sub not in reloaded and before[key][sub] != value[sub]
            ]
        elif before[key] != value:
            changed.append(key)
    return sorted(changed)


def force_exit(reason: str) -> NoReturn:
    """End the process at once (exit status 1): nothing acknowledged is lost — each 202 was
    given after its commit — and a delivery cut off is reconciled, as after `kill -9`."""
    log.warning(
        f"stopping at once ({reason}): requests still in flight get no answer; every "
        "acknowledged submission is on disk, and deliveries cut off are reconciled"
    )
    sys.stderr.flush()
    os._exit(FORCED_EXIT)
