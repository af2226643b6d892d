"""The record of lookups that found nothing (`Absence`), which decides when a submission that
may have been sent is resent: its times come from the wall clock, which can step back."""

from __future__ import annotations

from gateway.outbox.delivery import Absence


def test_lookups_count_from_the_first() -> None:
    first = Absence().seen(1000.0)
    second = first.seen(1003.0)
    assert (2, 1000.0, 1003.0) == (second.count, second.since, second.last)
    assert second.proven(2, 2.0)
    assert not second.proven(2, 5.0)


def test_a_record_from_before_a_clock_step_back_starts_again() -> None:
    """One lookup at 5000, then the clock steps back an hour: counting on would wait until the
    clock reached 5000 again plus the settle time, an hour with nothing resent. The count starts
    again from the lookup now, and proves absence after the settle time as usual."""
    before = Absence().seen(5000.0)
    after = before.seen(1400.0)
    assert (1, 1400.0, 1400.0) == (after.count, after.since, after.last)
    assert not after.proven(2, 2.0)
    assert after.seen(1402.5).proven(2, 2.0)
