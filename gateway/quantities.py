"""Argument types the subcommands share: numbers within bounds, refused in words.

number(0, above=True)          > 0          (a rate, a duration)
number(0)                      >= 0
number(0.1, 20)                0.1 … 20
whole_number(1)                1, 2, 3, …
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


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
