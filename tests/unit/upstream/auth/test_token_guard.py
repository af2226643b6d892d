"""The token guard: what each answer of the token endpoint holds back, for how long, and the caps,
all on a fake clock."""

from __future__ import annotations

import json

import pytest

from gateway.clock import iso_utc
from gateway.config import TokenCallsConfig
from gateway.upstream.auth.token_guard import (
    DAY,
    HOUR,
    HoldCause,
    TokenAnswer,
    TokenCallResult,
    TokenGuard,
    classify_answer,
)
from tests.support.fakes import FakeClock

COOLDOWN = 6 * HOUR
SUCCESS = TokenAnswer(TokenCallResult.SUCCESS)
FAILURE = TokenAnswer(TokenCallResult.FAILURE, detail="cannot reach the token endpoint")
QUOTA = TokenAnswer(TokenCallResult.QUOTA, code="070306", detail="HTTP 200, error 070306: 超限")
WRONG_SECRET = TokenAnswer(
    TokenCallResult.CONFIG_ERROR, code="070305", detail="HTTP 200, error 070305: client_secret错误"
)


def guard(
    clock: FakeClock,
    *,
    credentials: str = "config-a",
    per_hour: int = 5,
    per_day: int = 20,
    base: str = "30s",
    cap: str = "15m",
) -> TokenGuard:
    limits = TokenCallsConfig.model_validate(
        {"per_hour": per_hour, "per_day": per_day, "backoff": {"base": base, "cap": cap}}
    )
    return TokenGuard(limits, quota_cooldown=COOLDOWN, credentials=credentials, clock=clock)


# -- classifying the token endpoint's answers -----------------------------------------------------


@pytest.mark.parametrize("expires_in", ["7200", 7200, 7200.0])
def test_a_token_is_success_whether_expires_in_is_a_string_or_a_number(
    expires_in: object,
) -> None:
    """`{"access_token", "expires_in"}` is a token; the platform sends expires_in as a string."""
    text = json.dumps({"access_token": "tok", "expires_in": expires_in})
    answer = classify_answer(200, text, now=1000.0)
    assert TokenCallResult.SUCCESS == answer.result
    assert answer.token is not None
    assert ("tok", 1000.0, 7200.0) == (
        answer.token.value,
        answer.token.obtained_at,
        answer.token.expires_in,
    )


@pytest.mark.parametrize(
    ("code", "result"),
    [
        ("070304", TokenCallResult.CONFIG_ERROR),
        ("070305", TokenCallResult.CONFIG_ERROR),
        ("070307", TokenCallResult.CONFIG_ERROR),
        ("070306", TokenCallResult.QUOTA),
        ("040102", TokenCallResult.FAILURE),
    ],
)
def test_refusal_codes_are_told_apart(code: str, result: TokenCallResult) -> None:
    """Wrong credentials, the quota and any other refusal are three different results."""
    text = json.dumps({"error": code, "error_description": "说明"})
    answer = classify_answer(200, text, now=0.0)
    assert (result, code) == (answer.result, answer.code)
    assert code in answer.detail


@pytest.mark.parametrize(
    ("status", "text"),
    [(502, "<html>Bad Gateway</html>"), (200, "[1, 2]"), (503, "")],
)
def test_an_unreadable_answer_is_a_failure(status: int, text: str) -> None:
    """A body that is not a JSON object is a failure (back-off), never a configuration error."""
    answer = classify_answer(status, text, now=0.0)
    assert TokenCallResult.FAILURE == answer.result
    assert f"HTTP {status}" in answer.detail


# -- holds ------------------------------------------------------------------------------------


def test_a_configuration_error_holds_until_an_operator_releases_it() -> None:
    """070305: no token call for days, the reason names the key to fix; release ends it."""
    clock = FakeClock()
    g = guard(clock)
    hold = g.record(WRONG_SECRET)
    assert hold is not None
    assert (HoldCause.CONFIG_ERROR, None) == (hold.cause, hold.until)
    assert "upstream.auth.app_secret" in hold.reason
    clock.advance(30 * DAY)
    assert HoldCause.CONFIG_ERROR == g.hold().cause  # type: ignore[union-attr]
    ended = g.release()
    assert ended is not None
    assert HoldCause.CONFIG_ERROR == ended.cause
    assert g.hold() is None


def test_quota_holds_until_the_cooldown_or_an_operator() -> None:
    """070306: held for quota_cooldown, with that end in the reason; then a call is allowed."""
    clock = FakeClock()
    g = guard(clock)
    refused_at = clock.wall()
    hold = g.record(QUOTA)
    assert hold is not None
    assert (HoldCause.QUOTA, refused_at + COOLDOWN) == (hold.cause, hold.until)
    assert iso_utc(refused_at + COOLDOWN) in hold.reason
    assert "invoice-gateway token refresh" in hold.reason
    clock.advance(COOLDOWN - 1)
    assert HoldCause.QUOTA == g.hold().cause  # type: ignore[union-attr]
    clock.advance(1)
    assert g.hold() is None


def test_failures_back_off_exponentially_up_to_the_cap() -> None:
    """Each failed call holds the next one back twice as long, at most the cap; a success ends
    the back-off."""
    clock = FakeClock()
    g = guard(clock, base="30s", cap="2m", per_hour=100, per_day=100)
    waits = []
    for _ in range(4):
        hold = g.record(FAILURE)
        assert hold is not None
        assert HoldCause.BACKOFF == hold.cause
        assert hold.until is not None
        waits.append(hold.until - clock.wall())
        clock.advance(hold.until - clock.wall())
        assert g.hold() is None
    assert [30.0, 60.0, 120.0, 120.0] == waits
    assert g.record(SUCCESS) is None
    assert 30.0 == g.record(FAILURE).until - clock.wall()  # type: ignore[union-attr,operator]


def test_the_hourly_cap_holds_until_the_oldest_call_leaves_the_hour() -> None:
    """Five calls in an hour, whatever they came to: the sixth waits until the first is an hour
    old."""
    clock = FakeClock()
    g = guard(clock, per_hour=5)
    first = clock.wall()
    for _ in range(5):
        g.record(SUCCESS)
        clock.advance(60)
    hold = g.hold()
    assert hold is not None
    assert (HoldCause.HOURLY_CAP, first + HOUR) == (hold.cause, hold.until)
    assert "upstream.auth.token_calls.per_hour" in hold.reason
    clock.advance(first + HOUR - clock.wall())
    assert g.hold() is None


def test_the_daily_cap_holds_across_hours() -> None:
    """Calls spread over a day count against per_day even when no hour is full."""
    clock = FakeClock()
    g = guard(clock, per_hour=5, per_day=6)
    first = clock.wall()
    for _ in range(6):
        g.record(SUCCESS)
        clock.advance(HOUR)
    hold = g.hold()
    assert hold is not None
    assert (HoldCause.DAILY_CAP, first + DAY) == (hold.cause, hold.until)


def test_releasing_never_lifts_a_cap() -> None:
    """An operator's release ends the back-off but the hourly cap still holds."""
    clock = FakeClock()
    g = guard(clock, per_hour=2, per_day=20)
    g.record(FAILURE)
    g.record(FAILURE)
    g.release()
    hold = g.hold()
    assert hold is not None
    assert HoldCause.HOURLY_CAP == hold.cause


def test_the_error_tells_a_timed_hold_from_one_an_operator_ends() -> None:
    """`retry_after` is the time left for a back-off, none for a quota an operator may end."""
    clock = FakeClock()
    g = guard(clock)
    backoff = g.record(FAILURE)
    assert backoff is not None
    error = backoff.error(clock.wall() + 10)
    assert ("backoff", 20.0) == (error.cause, error.retry_after)
    quota = g.record(QUOTA)
    assert quota is not None
    error = quota.error(clock.wall())
    assert ("quota", None) == (error.cause, error.retry_after)


# -- what survives a restart ---------------------------------------------------------------------


def test_the_record_survives_a_restart() -> None:
    """Counts, the quota refusal and the back-off are where the last process left them."""
    clock = FakeClock()
    before = guard(clock)
    before.record(SUCCESS)
    before.record(QUOTA)
    after = guard(clock)
    assert [] == after.restore(before.dump())
    assert 2 == after.calls_within(HOUR)
    assert HoldCause.QUOTA == after.hold().cause  # type: ignore[union-attr]


def test_calls_older_than_thirty_days_are_forgotten() -> None:
    """The record keeps the platform's 30-day window, no more."""
    clock = FakeClock()
    g = guard(clock)
    g.record(SUCCESS)
    clock.advance(29 * DAY)
    g.record(SUCCESS)
    clock.advance(DAY + 1)
    again = guard(clock)
    again.restore(g.dump())
    assert 1 == again.calls_within(30 * DAY)


def test_new_credentials_end_a_configuration_error_but_not_the_quota() -> None:
    """A restart with other credentials asks again after a configuration error; the quota is
    the application's, and holds whatever the credentials."""
    clock = FakeClock()
    old = guard(clock, credentials="config-a")
    old.record(WRONG_SECRET)
    fixed = guard(clock, credentials="config-b")
    dropped = fixed.restore(old.dump())
    assert ["the configuration error 070305 (the credentials changed)"] == dropped
    assert fixed.hold() is None
    old.record(QUOTA)
    fixed = guard(clock, credentials="config-b")
    assert [] == fixed.restore(old.dump())
    assert HoldCause.QUOTA == fixed.hold().cause  # type: ignore[union-attr]


def test_the_same_credentials_keep_a_configuration_error_across_a_restart() -> None:
    """A restart with the credentials the platform refused does not ask again."""
    clock = FakeClock()
    old = guard(clock)
    old.record(WRONG_SECRET)
    again = guard(clock)
    again.restore(old.dump())
    assert HoldCause.CONFIG_ERROR == again.hold().cause  # type: ignore[union-attr]


def test_an_unreadable_record_is_refused() -> None:
    """`restore` raises ValueError for text that is not a guard's record."""
    with pytest.raises(ValueError, match="not a JSON object"):
        guard(FakeClock()).restore("[]")
