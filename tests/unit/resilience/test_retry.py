"""Back-off, Retry-After and the retry budget."""

from __future__ import annotations

import random

import pytest

from gateway.config import BackoffConfig, RetryBudgetConfig, RetryPolicyConfig
from gateway.headers import parse_retry_after
from gateway.resilience.failures import FailureClass
from gateway.resilience.retry import RetryBudget, RetryPolicy
from tests.support.fakes import FakeClock


def policy(**overrides: object) -> RetryPolicy:
    default = RetryPolicyConfig(
        deadline=10.0,
        attempts=5,
        backoff=BackoffConfig(base=0.1, cap=2.0, multiplier=2.0),
        retry_on=["busy"],
        retry_after_cap=5.0,
    )
    return RetryPolicy.resolve(default, RetryPolicyConfig.model_validate(overrides))


def test_override_replaces_only_given_fields() -> None:
    """An operation's policy overrides field by field."""
    resolved = policy(attempts=2, retry_on=["http_5xx", "refused"])
    assert 2 == resolved.attempts
    assert 10.0 == resolved.deadline
    assert frozenset({FailureClass.HTTP_5XX, FailureClass.REFUSED}) == resolved.retry_on


@pytest.mark.parametrize(
    ("retry", "ceiling"), [(1, 0.1), (2, 0.2), (3, 0.4), (5, 1.6), (6, 2.0), (60, 2.0)]
)
def test_full_jitter_stays_under_the_exponential_ceiling(retry: int, ceiling: float) -> None:
    """Every back-off is in [0, min(cap, base * 2**(n-1))]."""
    rng = random.Random(7)
    samples = [policy().backoff(retry, rng) for _ in range(2000)]
    assert all(0.0 <= s <= ceiling for s in samples)
    # Full jitter spreads over the whole range, not just near the ceiling.
    assert min(samples) < ceiling * 0.05
    assert max(samples) > ceiling * 0.95


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("3", 3.0),
        (" 120 ", 120.0),
        ("Wed, 21 Oct 2026 07:28:10 GMT", 10.0),
        ("Wed, 21 Oct 2026 07:27:00 GMT", 0.0),
        ("soon", None),
        ("-5", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_parsing(value: str | None, expected: float | None) -> None:
    """Retry-After is delay-seconds or an HTTP-date; garbage is ignored."""
    now = 1792567680.0  # Wed, 21 Oct 2026 07:28:00 GMT
    assert expected == parse_retry_after(value, now)


def budget(
    ratio: float = 0.2, min_retries: int = 10, window: float = 10.0
) -> tuple[RetryBudget, FakeClock]:
    clock = FakeClock()
    config = RetryBudgetConfig(ratio=ratio, min_retries=min_retries, window=window)
    return RetryBudget(config, clock), clock


def test_budget_stops_a_storm() -> None:
    """1,000 failing requests in one window may add at most 20 % + the minimum in retries."""
    retry_budget, _ = budget()
    granted = 0
    for _ in range(1000):
        retry_budget.record_request()
        for _attempt in range(3):  # each request would like 3 retries
            if retry_budget.try_acquire():
                granted += 1
    assert granted <= 0.2 * 1000 + 10
    assert granted >= 0.2 * 1000  # and the budget is really available, not zero
    assert 3000 - granted == retry_budget.rejected


def test_budget_allows_the_minimum_at_low_volume() -> None:
    """With little traffic the minimum still allows retries."""
    retry_budget, _ = budget(ratio=0.0, min_retries=3)
    retry_budget.record_request()
    assert [True, True, True, False] == [retry_budget.try_acquire() for _ in range(4)]


def test_budget_refills_as_the_window_slides() -> None:
    """Old requests and retries leave the window, so a later burst gets a fresh budget."""
    retry_budget, clock = budget(ratio=0.0, min_retries=2, window=10.0)
    assert [True, True, False] == [retry_budget.try_acquire() for _ in range(3)]
    clock.advance(11)
    assert retry_budget.try_acquire()


def test_budget_sequential_failures_are_capped() -> None:
    """One-at-a-time failing requests cannot each retry (a concurrency cap alone would allow it)."""
    retry_budget, clock = budget(ratio=0.2, min_retries=2, window=10.0)
    granted = 0
    for _ in range(100):
        retry_budget.record_request()
        granted += retry_budget.try_acquire()
        clock.advance(0.05)
    assert granted <= 0.2 * 100 + 2
