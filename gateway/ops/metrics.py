"""Prometheus metrics (docs/design.md#metrics): prefix `gateway_`, base units, bounded labels.

Request and attempt metrics are recorded as they happen; the state of the breakers, the outbox,
the dispatcher, the token and the store is read when Prometheus scrapes (`GatewayCollector`),
plus an outbox sampler, since counting the outbox needs the store.

Labels are operation names from the configuration (plus `unmatched`), tenants from the
configuration, outcomes, states, failure classes and configured business codes — never an
order number, tax number or anything else a client chooses.
"""

from __future__ import annotations

import platform
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

import structlog
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from gateway import __version__
from gateway.clock import SAMPLING_SHARE, Clock, Periodic
from gateway.edge.intake import Intake
from gateway.errors import StoreError
from gateway.outbox.callbacks import CallbackSender
from gateway.outbox.dispatcher import Dispatcher
from gateway.outbox.issuance import IssuanceFollower
from gateway.outbox.outage import StoreOutage
from gateway.outbox.store import OutboxStore
from gateway.outbox.submissions import IssuanceOutcome, SubmissionState
from gateway.resilience.breaker import BreakerRegistry, CircuitState
from gateway.resilience.failover import Endpoint
from gateway.resilience.failures import Verdict
from gateway.resilience.pipeline import ResiliencePipeline
from gateway.resilience.probe import HealthStatus, UpstreamHealth
from gateway.upstream.auth import UpstreamAuth
from gateway.upstream.auth.token_guard import HoldCause, TokenCallResult, TokenStatus


class Observed(Protocol):
    """The running gateway's parts read at scrape time (`gateway.app.Gateway` is one)."""

    @property
    def clock(self) -> Clock: ...
    @property
    def auth(self) -> UpstreamAuth: ...
    @property
    def pipeline(self) -> ResiliencePipeline: ...
    @property
    def breakers(self) -> BreakerRegistry: ...
    @property
    def health(self) -> UpstreamHealth: ...
    @property
    def dispatcher(self) -> Dispatcher: ...
    @property
    def issuance(self) -> IssuanceFollower: ...
    @property
    def intake(self) -> Intake: ...
    @property
    def started_at(self) -> float: ...
    @property
    def callbacks(self) -> CallbackSender: ...


log = structlog.get_logger("gateway.ops.metrics")

#: Request latency buckets, placed at the SLO thresholds (fail-fast 10 ms, forward 250 ms/1 s,
#: deadline 10 s) so burn-rate rules can count "fast enough" without interpolation.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0)
UPSTREAM_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    """Every instrument, on a registry of its own (no global state)."""

    def __init__(
        self,
        *,
        operations: Iterable[str],
        business_codes: Iterable[str],
        followed: Iterable[str] = (),
    ) -> None:
        """`followed`: the operations whose issuance is followed (`issuance` rule)."""
        self.registry = CollectorRegistry(auto_describe=True)
        self._operations = frozenset(operations) | {"unmatched"}
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.followed = tuple(followed)
        self._codes = frozenset(business_codes)
        r = self.registry
        self.requests = Counter(
            "gateway_requests",
            "Client requests by operation, outcome and HTTP status class.",
            ["operation", "tenant", "outcome", "status_class"],
            registry=r,
        )
        self.request_errors = Counter(
            "gateway_request_errors",
            "Client requests that did not end in success, by error class.",
            ["operation", "error_class"],
            registry=r,
        )
        self.request_duration = Histogram(
            "gateway_request_duration_seconds",
            "Time to answer a client request.",
            ["operation", "outcome"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "gateway_in_flight_requests", "Client requests being served now.", registry=r
        )
        self.upstream_attempts = Counter(
            "gateway_upstream_attempts",
            "Calls to the platform by result: success or the failure class.",
            ["operation", "result"],
            registry=r,
        )
        self.endpoint_requests = Counter(
            "gateway_upstream_endpoint_requests",
            "Calls to the platform by endpoint: primary, or the backup (upstream.backup_url).",
            ["operation", "endpoint"],
            registry=r,
        )
        self.upstream_duration = Histogram(
            "gateway_upstream_duration_seconds",
            "Duration of calls to the platform.",
            ["operation"],
            buckets=UPSTREAM_BUCKETS,
            registry=r,
        )
        self.business_codes = Counter(
            "gateway_upstream_business_codes",
            "Business codes in the platform's answers (configured codes; others as 'other').",
            ["operation", "code"],
            registry=r,
        )
        self.configuration_errors = Counter(
            "gateway_upstream_configuration_errors",
            "Answers refusing the gateway's own setup, not the request (business_codes."
            "configuration: API not enabled, caller not the token's, no such API).",
            ["operation", "code"],
            registry=r,
        )
        self.retries = Counter(
            "gateway_retries", "Retries made within client requests.", ["operation"], registry=r
        )
        self.circuit_transitions = Counter(
            "gateway_circuit_transitions",
            "Circuit breaker state changes, by the state entered.",
            ["breaker", "to"],
            registry=r,
        )
        self.replays = Counter(
            "gateway_idempotent_replays",
            "Requests answered from a stored result (same idempotency key).",
            ["operation"],
            registry=r,
        )
        self.enqueued = Counter(
            "gateway_outbox_enqueued",
            "Submissions accepted into the outbox with 202.",
            ["operation", "tenant"],
            registry=r,
        )
        self.commit_duration = Histogram(
            "gateway_store_commit_duration_seconds",
            "Time of one group commit (transaction plus fsync).",
            buckets=COMMIT_BUCKETS,
            registry=r,
        )
        self.commit_batch = Histogram(
            "gateway_store_commit_batch_size",
            "Writes that shared one commit.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        )
        self.store_up = Gauge(
            "gateway_store_up",
            "1 while the store answered the last sample (every 2 s), 0 while it does not.",
            registry=r,
        )
        self.store_errors = Counter(
            "gateway_store_errors",
            "Samples of the outbox that the store failed (it was unreachable or refused).",
            registry=r,
        )
        self.outbox_depth = Gauge(
            "gateway_outbox_submissions",
            "Submissions in the outbox by state (sampled).",
            ["state"],
            registry=r,
        )
        self.oldest_queued = Gauge(
            "gateway_outbox_oldest_queued_age_seconds",
            "Age of the oldest queued submission (0 when none; sampled).",
            registry=r,
        )
        self.issuing = Gauge(
            "gateway_issuance_issuing",
            "Delivered submissions whose invoice the platform is still issuing (sampled).",
            ["operation"],
            registry=r,
        )
        self.build_info = Gauge(
            "gateway_build_info",
            "Always 1; labels say which build runs.",
            ["version", "python"],
            registry=r,
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)
        for state in SubmissionState:
            self.outbox_depth.labels(state.value).set(0)
        for name in self.followed:
            self.issuing.labels(name).set(0)

    def operation(self, name: str) -> str:
        """A bounded label value for an operation name."""
        return name if name in self._operations else "unmatched"

    def _child(self, metric: MetricWrapperBase, *labels: str) -> Any:
        """`metric.labels(*labels)`, kept: every label here is bounded, and the request path
        asks for the same few children on every request."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def label_codes(self, business_codes: Iterable[str]) -> None:
        """The codes counted under their own label from now on (a reload); others are
        `other`."""
        self._codes = frozenset(business_codes)

    # -- the pipeline's AttemptObserver ------------------------------------------------------

    def attempt(
        self,
        operation: str,
        verdict: Verdict,
        seconds: float,
        endpoint: Endpoint = Endpoint.PRIMARY,
    ) -> None:
        op = self.operation(operation)
        result = "success" if verdict.failure is None else verdict.failure.value
        self._child(self.upstream_attempts, op, result).inc()
        self._child(self.endpoint_requests, op, endpoint.value).inc()
        self._child(self.upstream_duration, op).observe(seconds)
        if verdict.code is not None:
            code = verdict.code if verdict.code in self._codes else "other"
            self.business_codes.labels(op, code).inc()
            if verdict.misconfigured:
                self.configuration_errors.labels(op, code).inc()

    def retry(self, operation: str) -> None:
        self.retries.labels(self.operation(operation)).inc()

    # -- hooks -------------------------------------------------------------------------------

    def request_started(self) -> None:
        self.in_flight.inc()

    def request_done(
        self,
        *,
        operation: str,
        tenant: str | None,
        outcome: str,
        status: int,
        error_class: str | None,
        seconds: float,
    ) -> None:
        self.in_flight.dec()
        op = self.operation(operation)
        self._child(self.requests, op, tenant or "-", outcome, f"{status // 100}xx").inc()
        self._child(self.request_duration, op, outcome).observe(seconds)
        if error_class is not None and status >= 400:
            self.request_errors.labels(op, error_class).inc()
        if outcome == "replayed":
            self.replays.labels(op).inc()
        elif outcome == "queued":
            self.enqueued.labels(op, tenant or "-").inc()

    def commit(self, writes: int, seconds: float) -> None:
        self.commit_batch.observe(writes)
        self.commit_duration.observe(seconds)

    def transition(self, breaker: str, _old: CircuitState, new: CircuitState, _reason: str) -> None:
        self.circuit_transitions.labels(breaker, new.value).inc()


class GatewayCollector(Collector):
    """Reads the running gateway's parts at scrape time."""

    def __init__(self, gateway: Observed) -> None:
        self._gateway = gateway

    def collect(self) -> Iterator[Metric]:
        gateway = self._gateway
        state = GaugeMetricFamily(
            "gateway_circuit_state",
            "1 for the state each circuit breaker is in, 0 for the others.",
            labels=["breaker", "state"],
        )
        for breaker in gateway.breakers.all():
            for candidate in CircuitState:
                state.add_metric([breaker.name, candidate.value], float(breaker.state is candidate))
        yield state

        health = GaugeMetricFamily(
            "gateway_upstream_health",
            "1 for the platform's health as the active probe sees it (up, down, unknown).",
            labels=["status"],
        )
        for status in HealthStatus:
            health.add_metric([status.value], float(gateway.health.status is status))
        yield health
        failover = gateway.pipeline.failover
        backup = GaugeMetricFamily(
            "gateway_upstream_backup_active",
            "1 while reads are sent to the backup endpoint because the primary is down or its "
            "circuit is open; 0 otherwise, and without a backup.",
        )
        backup.add_metric(
            [], float(failover is not None and failover.serving_reads() is Endpoint.BACKUP)
        )
        yield backup

        stats = gateway.dispatcher.stats
        for name, value, help_text in (
            ("delivered", stats.delivered, "Submissions the dispatcher delivered."),
            ("reconciled", stats.reconciled, "Deliveries proven by duplicate code and lookup."),
            ("failed", stats.failed, "Submissions the platform refused for good."),
            ("dead", stats.dead, "Submissions that ran out of attempts or age."),
            ("requeued", stats.requeued, "Delivery attempts put back for later."),
            ("parked", stats.parked, "Unknown submissions left for on-call."),
            (
                "fenced_writes",
                stats.fence_lost + gateway.intake.fence_lost,
                "Results not recorded (dispatcher deliveries and live forwards): a sweep took "
                "the submission over after its lease expired.",
            ),
        ):
            counter = CounterMetricFamily(f"gateway_outbox_{name}", help_text)
            counter.add_metric([], float(value))
            yield counter
        callbacks = gateway.callbacks
        for name, value, help_text in (
            ("sent", callbacks.sent, "Callback events a tenant's receiver took (2xx)."),
            (
                "failed",
                callbacks.failed,
                "Callback attempts not taken (refused, an error status, no answer in time); "
                "each is sent again later.",
            ),
            ("dead", callbacks.dead, "Callback events given up after callbacks.max_age."),
        ):
            counter = CounterMetricFamily(f"gateway_callbacks_{name}", help_text)
            counter.add_metric([], float(value))
            yield counter
        paused = GaugeMetricFamily("gateway_dispatcher_paused", "1 while on-call paused it.")
        paused.add_metric([], float(gateway.dispatcher.paused))
        yield paused
        in_flight = GaugeMetricFamily("gateway_dispatcher_in_flight", "Deliveries in flight.")
        in_flight.add_metric([], float(gateway.dispatcher.in_flight))
        yield in_flight

        yield from _issuance_metrics(gateway.issuance)

        rejected = CounterMetricFamily(
            "gateway_retry_budget_rejections", "Retries refused by the retry budget."
        )
        rejected.add_metric([], float(gateway.pipeline.budget.rejected))
        yield rejected

        auth = gateway.auth
        yield from _token_metrics(auth.token_status(), gateway.clock.wall())
        yield from _tenant_token_metrics(auth.tenant_tokens(), gateway.clock.wall())
        offset = GaugeMetricFamily(
            "gateway_upstream_clock_offset_seconds",
            "The platform's clock minus the gateway's, as learned from a refused signed time "
            "(0 until one); requests are signed with the platform's time.",
        )
        offset.add_metric([], auth.clock_offset)
        yield offset

        uptime = GaugeMetricFamily("gateway_start_time_seconds", "When the gateway started.")
        uptime.add_metric([], gateway.started_at)
        yield uptime


def _issuance_metrics(follower: IssuanceFollower) -> Iterator[Metric]:
    """Final issuance outcomes of accepted invoices (every followed operation and outcome, 0
    until one), and the lookups that follow them."""
    final = CounterMetricFamily(
        "gateway_issuance_final",
        "Accepted submissions whose invoice reached a final outcome: done, failed, "
        "signing_failed (both turn the submission issue_failed), cancelled, given_up.",
        labels=["operation", "outcome"],
    )
    for operation in follower.routes:
        for outcome in IssuanceOutcome:
            if outcome.final:
                final.add_metric(
                    [operation, outcome.value], float(follower.stats.final[(operation, outcome)])
                )
    yield final
    lookups = CounterMetricFamily(
        "gateway_issuance_lookups",
        "Lookups of accepted invoices' issuance, by result (failure: asked again later).",
        labels=["result"],
    )
    stats = follower.stats
    lookups.add_metric(["success"], float(stats.lookups - stats.lookup_failures))
    lookups.add_metric(["failure"], float(stats.lookup_failures))
    yield lookups


def _token_metrics(status: TokenStatus | None, now: float) -> Iterator[Metric]:
    """The access token and the calls to the token endpoint (a scheme without tokens: zeros)."""
    calls = CounterMetricFamily(
        "gateway_token_refreshes",
        "Access token requests to the platform, by result: success, config_error (wrong "
        "credentials), quota (the token quota is used up), failure (anything else).",
        labels=["result"],
    )
    for result in TokenCallResult:
        calls.add_metric([result.value], float(status.results[result] if status else 0))
    yield calls
    recent = GaugeMetricFamily(
        "gateway_token_calls_30d",
        "Access token requests in the last 30 days, kept across restarts (the platform allows "
        "about 50 per 30 days).",
    )
    recent.add_metric([], float(status.calls_last_30_days if status else 0))
    yield recent
    hold = GaugeMetricFamily(
        "gateway_token_hold",
        "1 for what holds token requests back now (config_error, quota, backoff, hourly_cap, "
        "daily_cap), 0 for the others.",
        labels=["cause"],
    )
    held = status.hold.cause if status is not None and status.hold is not None else None
    for cause in HoldCause:
        hold.add_metric([cause.value], float(cause is held))
    yield hold
    age = GaugeMetricFamily(
        "gateway_token_age_seconds", "Age of the access token in use (absent without one)."
    )
    if status is not None and status.obtained_at is not None:
        age.add_metric([], max(0.0, now - status.obtained_at))
    yield age


def _tenant_token_metrics(tenants: Mapping[str, TokenStatus], now: float) -> Iterator[Metric]:
    """Each tenant's own access token (a merchant of a service-provider application); the
    `tenant` label takes only the configured tenants' ids."""
    calls = CounterMetricFamily(
        "gateway_tenant_token_refreshes",
        "A tenant's own access token requests to the platform, by result (as "
        "gateway_token_refreshes_total; config_error also when its authorization is refused).",
        labels=["tenant", "result"],
    )
    recent = GaugeMetricFamily(
        "gateway_tenant_token_calls_30d",
        "A tenant's own access token requests in the last 30 days, kept across restarts.",
        labels=["tenant"],
    )
    hold = GaugeMetricFamily(
        "gateway_tenant_token_hold",
        "1 for what holds a tenant's own token requests back now, 0 for the other causes.",
        labels=["tenant", "cause"],
    )
    age = GaugeMetricFamily(
        "gateway_tenant_token_age_seconds",
        "Age of a tenant's own access token (absent without one).",
        labels=["tenant"],
    )
    for tenant, status in sorted(tenants.items()):
        for result in TokenCallResult:
            calls.add_metric([tenant, result.value], float(status.results[result]))
        recent.add_metric([tenant], float(status.calls_last_30_days))
        held = status.hold.cause if status.hold is not None else None
        for cause in HoldCause:
            hold.add_metric([tenant, cause.value], float(cause is held))
        if status.obtained_at is not None:
            age.add_metric([tenant], max(0.0, now - status.obtained_at))
    yield from (calls, recent, hold, age)


class OutboxSampler:
    """Counts the outbox every `interval` seconds into the depth gauges."""

    def __init__(self, metrics: Metrics, store: OutboxStore, clock: Clock, interval: float) -> None:
        self._metrics = metrics
        self._store = store
        self._clock = clock
        self._outage = StoreOutage(
            log, clock, task="outbox-sampler", stops="the outbox metrics keep their last values"
        )
        self._periodic = Periodic(
            "outbox-sampler",
            self.sample,
            interval=interval,
            clock=clock,
            failure="cannot count the outbox for metrics",
            max_share=SAMPLING_SHARE,
        )

    def start(self) -> None:
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    async def sample(self) -> None:
        try:
            counts = await self._store.counts()
        except StoreError as exc:
            self._metrics.store_up.set(0)
            self._metrics.store_errors.inc()
            self._outage.failed(exc)
            return
        self._metrics.store_up.set(1)
        self._outage.answered()
        for state, count in counts.by_state.items():
            self._metrics.outbox_depth.labels(state.value).set(count)
        for operation in self._metrics.followed:
            self._metrics.issuing.labels(operation).set(counts.issuing.get(operation, 0))
        oldest = counts.oldest_queued_at
        self._metrics.oldest_queued.set(max(0.0, self._clock.wall() - oldest) if oldest else 0.0)


def metrics_handler(
    registry: CollectorRegistry,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """An aiohttp handler serving `registry` in the Prometheus text format."""

    async def handle(_request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(registry))
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response

    return handle
