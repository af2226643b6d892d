"""The signed call's nonce: always a positive 8-digit number without a leading zero."""

from __future__ import annotations

import random
import re

from gateway.upstream.auth.signature import NONCE_MAX, NONCE_MIN, new_nonce

EIGHT_DIGITS = re.compile(r"[1-9][0-9]{7}")


def test_nonce_is_eight_digits_without_a_leading_zero_over_many_draws() -> None:
    """100,000 draws from a seeded generator are all 10000000-99999999 and spread over it."""
    rng = random.Random(20240601)
    nonces = [new_nonce(rng.randrange) for _ in range(100_000)]
    assert [] == [n for n in nonces if not EIGHT_DIGITS.fullmatch(n)]
    # Uniform over 9 leading digits: each appears about 11,111 times.
    leading = {digit: sum(n[0] == digit for n in nonces) for digit in "123456789"}
    assert [] == [d for d, count in leading.items() if not 10_000 < count < 12_300]


def test_nonce_range_ends_are_the_smallest_and_largest_eight_digit_numbers() -> None:
    """The lowest draw is 10000000 (the old code sent 00000000) and the highest 99999999."""
    assert ("10000000", "99999999") == (new_nonce(lambda n: 0), new_nonce(lambda n: n - 1))
    assert (10_000_000, 99_999_999) == (NONCE_MIN, NONCE_MAX)


def test_default_nonce_source_keeps_the_shape() -> None:
    """The gateway's own nonces (from `secrets`) have the same shape."""
    assert [] == [n for n in (new_nonce() for _ in range(10_000)) if not EIGHT_DIGITS.fullmatch(n)]
