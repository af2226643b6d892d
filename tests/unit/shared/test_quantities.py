"""Durations and numbers as people write them, and durations as the gateway writes them back."""

from __future__ import annotations

import argparse

import pytest

from gateway.quantities import duration, format_duration, parse_duration, whole_number


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("15", 15.0),
        ("0.5", 0.5),
        (".5", 0.5),
        ("250ms", 0.25),
        ("15s", 15.0),
        ("2m", 120.0),
        ("2min", 120.0),
        ("72h", 259_200.0),
        ("3d", 259_200.0),
        (" 1.5 h ", 5_400.0),
        ("0", 0.0),
    ],
)
def test_parse_duration_reads_plain_seconds_and_units(text: str, seconds: float) -> None:
    """Plain numbers are seconds; ms, s, m, h and d scale them; spaces around are fine."""
    assert seconds == parse_duration(text)


@pytest.mark.parametrize("text", ["soon", "", "15 sec", "-5s", "1e3", "h", "5 5s", "nan"])
def test_parse_duration_refuses_anything_else_saying_how_to_write_one(text: str) -> None:
    """A bad duration is a ValueError that quotes it and shows the accepted forms."""
    with pytest.raises(ValueError, match=r"not a duration: .* \(use seconds, or e\.g\. '250ms'"):
        parse_duration(text)


def test_duration_argument_type_reads_units_and_checks_bounds() -> None:
    """`duration(0, above=True)` takes `2s` or `250ms`, and refuses 0 and words in words."""
    positive = duration(0, above=True)
    assert (2.0, 0.25, 10.0) == (positive("2s"), positive("250ms"), positive("10"))
    with pytest.raises(argparse.ArgumentTypeError, match="must be more than 0 s, got 0ms"):
        positive("0ms")
    with pytest.raises(argparse.ArgumentTypeError, match="not a duration: 'soon'"):
        positive("soon")
    assert 0.0 == duration(0)("0")
    with pytest.raises(argparse.ArgumentTypeError, match="must be between 1 and 60 s, got 2m"):
        duration(1, 60)("2m")


def test_whole_number_refuses_fractions_and_numbers_below_its_floor() -> None:
    """`whole_number(0)` takes 0, 1, 2, … and nothing else."""
    assert 0 == whole_number(0)("0")
    with pytest.raises(argparse.ArgumentTypeError, match=r"not a whole number: '1\.5'"):
        whole_number(0)("1.5")
    with pytest.raises(argparse.ArgumentTypeError, match="must be at least 0, got -1"):
        whole_number(0)("-1")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (259_200, "72 h"),
        (3_600, "1 h"),
        (9_000, "2.5 h"),
        (5_400, "90 min"),
        (1_800, "30 min"),
        (120, "2 min"),
        (90, "90 s"),
        (45.3, "45.3 s"),
        (1.5, "1.5 s"),
        (0.25, "250 ms"),
        (0, "0 s"),
    ],
)
def test_format_duration_picks_the_unit_people_would_say(seconds: float, text: str) -> None:
    """Hours, minutes or seconds (ms under one): a unit it fills twice or a whole one of."""
    assert text == format_duration(seconds)


def test_format_duration_reads_back_with_parse_duration() -> None:
    """What format_duration writes, parse_duration reads back (to its one decimal)."""
    for seconds in (259_200, 9_000, 1_800, 90, 1.5, 0.25, 0):
        assert seconds == parse_duration(format_duration(seconds))
