"""Per-tenant limits: one tenant over its limit gets 429 while another is served."""

from __future__ import annotations

import pytest

from gateway.config import TenantConfig, TenantLimitsConfig
from gateway.edge.limits import TenantLimited, TenantLimiter
from tests.support.fakes import FakeClock


def limiter(clock: FakeClock, seen: list[tuple[str, str]]) -> TenantLimiter:
    tenants = [
        TenantConfig(id="acme", limits=TenantLimitsConfig(rate=1, burst=2)),
        TenantConfig(id="demo", limits=TenantLimitsConfig(concurrency=1)),
        TenantConfig(id="free"),
    ]
    return TenantLimiter(
        tenants, TenantLimitsConfig(rate=100), clock, lambda t, lim: seen.append((t, lim))
    )


def test_rate_limit_names_the_tenant_and_says_when() -> None:
    clock, seen = FakeClock(), []
    limits = limiter(clock, seen)
    limits.acquire("acme")()
    limits.acquire("acme")()
    with pytest.raises(TenantLimited) as refused:
        limits.acquire("acme")
    assert (429, "tenant-rate-limited", 1) == (
        refused.value.status,
        refused.value.slug,
        refused.value.retry_after,
    )
    assert "acme" in refused.value.detail
    assert [("acme", "rate")] == seen
    for _ in range(50):  # another tenant is served meanwhile (the default limit: 100/s)
        limits.acquire("free")()
    clock.advance(1.0)
    limits.acquire("acme")()


def test_concurrency_limit() -> None:
    clock, seen = FakeClock(), []
    limits = limiter(clock, seen)
    release = limits.acquire("demo")
    with pytest.raises(TenantLimited) as refused:
        limits.acquire("demo")
    assert "tenant-concurrency-limited" == refused.value.slug
    release()
    release()  # twice is harmless
    limits.acquire("demo")()
    assert [("demo", "concurrency")] == seen


def test_no_limits_configured() -> None:
    limits = TenantLimiter([TenantConfig(id="acme")], None, FakeClock())
    for _ in range(1000):
        limits.acquire("acme")()


def test_a_reload_keeps_requests_in_progress_counted() -> None:
    """demo may have one request in progress; one is. Reloaded with two allowed, one more is
    admitted, not two; its first request's release still counts after the reload. acme's rate
    bucket is kept when its rate is unchanged (its burst already used stays used)."""
    clock, seen = FakeClock(), []
    limits = limiter(clock, seen)
    release = limits.acquire("demo")
    limits.acquire("acme")()
    limits.acquire("acme")()
    tenants = [
        TenantConfig(id="acme", limits=TenantLimitsConfig(rate=1, burst=2)),
        TenantConfig(id="demo", limits=TenantLimitsConfig(concurrency=2)),
    ]
    limits.reconfigure(tenants, None)
    limits.acquire("demo")
    with pytest.raises(TenantLimited):
        limits.acquire("demo")
    release()
    limits.acquire("demo")
    with pytest.raises(TenantLimited):
        limits.acquire("acme")
    for _ in range(200):  # no default any more: free is unlimited
        limits.acquire("free")()
