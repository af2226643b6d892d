"""Per-tenant limits: a request rate (token bucket) and requests at once.

A tenant over its limit gets `429` with `Retry-After` and a problem type naming the limit
(`tenant-rate-limited`, `tenant-concurrency-limited`); other tenants are served as before.
Limits come from `tenants[].limits`, else `limits.tenant`; no limits: nothing is counted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.clock import Clock
from gateway.config import TenantConfig, TenantLimitsConfig
from gateway.errors import ClientRequestError
from gateway.resilience.ratelimit import TokenBucket

RATE: str = "rate"
CONCURRENCY: str = "concurrency"


class TenantLimited(ClientRequestError):
    """A tenant over one of its limits."""

    status = 429

    def __init__(self, tenant: str, limit: str, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.tenant = tenant
        self.limit = limit
        self.retry_after = retry_after
        self.slug = f"tenant-{limit}-limited"
        self.title = (
            "Too many requests for this tenant"
            if limit == RATE
            else "Too many requests at once for this tenant"
        )


@dataclass
class _Limits:
    bucket: TokenBucket | None
    concurrency: int | None
    in_flight: int = 0


class TenantLimiter:
    """Admits a tenant's request or raises `TenantLimited`; `on_limited(tenant, limit)` is
    told of every refusal (the `gateway_tenant_limited_total` metric)."""

    def __init__(
        self,
        tenants: Sequence[TenantConfig],
        default: TenantLimitsConfig | None,
        clock: Clock,
        on_limited: Callable[[str, str], None] = lambda _tenant, _limit: None,
    ) -> None:
        self._on_limited = on_limited
        self._clock = clock
        self._limits: dict[str, _Limits] = {}
        self.reconfigure(tenants, default)

    def reconfigure(
        self, tenants: Sequence[TenantConfig], default: TenantLimitsConfig | None
    ) -> None:
        """Take up the limits of a (reloaded) configuration. A tenant's requests in progress
        keep counting against its new concurrency cap; a rate that did not change keeps its
        bucket (and what it has used)."""
        limits: dict[str, _Limits] = {}
        for tenant in tenants:
            config = tenant.limits or default
            if config is None or (config.rate is None and config.concurrency is None):
                continue
            current = self._limits.get(tenant.id)
            bucket = None
            if config.rate is not None:
                burst = config.burst or max(1, math.ceil(config.rate))
                kept = current.bucket if current is not None else None
                same = kept is not None and (kept.rate, kept.burst) == (config.rate, burst)
                bucket = kept if same else TokenBucket(config.rate, burst, self._clock)
            if current is None:
                limits[tenant.id] = _Limits(bucket, config.concurrency)
            else:
                # The same object: releases of requests admitted before the reload find it.
                current.bucket, current.concurrency = bucket, config.concurrency
                limits[tenant.id] = current
        self._limits = limits

    def acquire(self, tenant: str) -> Callable[[], None]:
        """Admit one request of `tenant`; returns what to call once it has been served."""
        limits = self._limits.get(tenant)
        if limits is None:
            return _nothing
        if limits.concurrency is not None and limits.in_flight >= limits.concurrency:
            self._on_limited(tenant, CONCURRENCY)
            raise TenantLimited(
                tenant,
                CONCURRENCY,
                f"tenant {tenant!r} may have at most {limits.concurrency} requests in progress "
                "at once; nothing was sent. Retry after Retry-After",
                retry_after=1,
            )
        if limits.bucket is not None and not limits.bucket.try_acquire():
            self._on_limited(tenant, RATE)
            bucket = limits.bucket
            wait = max(1, math.ceil((1.0 - bucket.available) / bucket.rate))
            raise TenantLimited(
                tenant,
                RATE,
                f"tenant {tenant!r} may send {bucket.rate:g} requests per second on average "
                f"(bursts of {bucket.burst}); nothing was sent. Retry after Retry-After",
                retry_after=wait,
            )
        limits.in_flight += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                limits.in_flight -= 1

        return release


def _nothing() -> None:
    return None
