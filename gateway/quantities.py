"""Numbers and durations as people write them (in the config file, on the command line), refused
in words, and durations as the gateway writes them back.

parse_duration("250ms")        0.25 seconds; also `15`, `15s`, `2m` (or `2min`), `72h`, `3d`
format_duration(259_200)       "72 h"
duration(0, above=True)        an argparse type: a duration > 0, as `parse_duration` reads it
number(0, above=True)          > 0          (a rate)
number(0)                      >= 0
number(0.1, 20)                0.1 … 20
whole_number(1)                1, 2, 3, …
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from typing import Final

_DURATION: Final = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|min|s|m|h|d)?\s*$")
_UNIT_SECONDS: Final = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    None: 1.0,
}
#: The units `format_duration` writes, largest first.
_SPOKEN_UNITS: Final = (("h", 3600.0), ("min", 60.0), ("s", 1.0))


def parse_duration(text: str) -> float:
    """Seconds from `15` (plain seconds), `250ms`, `15s`, `2m` (or `2min`), `72h` or `3d`.

    Raises ValueError saying how to write one."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (use seconds, or e.g. '250ms', '15s', '72h')")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def format_duration(seconds: float) -> str:
    """`72 h`, `30 min`, `90 s`, `250 ms`, `2.5 h`: the largest unit the value fills twice over or
    is a whole number of, to at most one decimal; `parse_duration` reads it back."""
    if 0 < seconds < 1:
        return f"{round(seconds * 1000, 1):g} ms"
    for name, size in _SPOKEN_UNITS:
        if seconds >= 2 * size or (seconds >= size and seconds % size == 0):
            return f"{round(seconds / size, 1):g} {name}"
    return f"{round(seconds, 1):g} s"


def duration(low: float, high: float = math.inf, *, above: bool = False) -> Callable[[str], float]:
    """An argparse type: a duration (`parse_duration`) from `low` seconds (exclusive with
    `above`) to `high`, in seconds."""

    def parse(text: str) -> float:
        try:
            value = parse_duration(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        _check(value, text, low, high, above, " s")
        return value

    return parse


def number(
    low: float, high: float = math.inf, *, above: bool = False, unit: str = ""
) -> Callable[[str], float]:
    """A finite number from `low` (exclusive with `above`) to `high`."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        _check(value, text, low, high, above, unit)
        return value

    return parse


def whole_number(low: int, high: float = math.inf, *, unit: str = "") -> Callable[[str], int]:
    """A whole number from `low` to `high`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        _check(value, text, low, high, False, unit)
        return value

    return parse


def _check(value: float, text: str, low: float, high: float, above: bool, unit: str) -> None:
    too_low = value <= low if above else value < low
    if not (math.isfinite(value) and not too_low and value <= high):
        if math.isfinite(high):
            bounds = f"between {low:g} and {high:g}{unit}"
        elif above:
            bounds = f"more than {low:g}{unit}"
        else:
            bounds = f"at least {low:g}{unit}"
        raise argparse.ArgumentTypeError(f"must be {bounds}, got {text.strip()}")
