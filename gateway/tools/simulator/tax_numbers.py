"""Buyer tax numbers: the rule that makes an issuance fail, and a way to make numbers that pass.

A unified social credit code (统一社会信用代码, GB 32100-2015) is 18 characters whose last one is a
check character over the first 17. The simulator uses that check to fail issuances
deterministically: an order whose `buyerTaxNum` is not a valid tax number is accepted (`E0000`)
and then fails asynchronously (status 22, `failCause` set), as the real platform does when the tax
bureau rejects the buyer.
"""

from __future__ import annotations

import re
from typing import Final

_ALPHABET: Final = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_WEIGHTS: Final = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)
#: Older taxpayer numbers (15 or 20 characters) carry no check character.
_LEGACY = re.compile(r"[0-9A-Z]{15}|[0-9A-Z]{20}")


def check_character(first17: str) -> str:
    """The GB 32100 check character for the first 17 characters of a credit code."""
    total = sum(
        _ALPHABET.index(char) * weight for char, weight in zip(first17, _WEIGHTS, strict=True)
    )
    return _ALPHABET[(31 - total % 31) % 31]


def is_valid_tax_number(tax_number: str) -> bool:
    """True for an 18-character credit code with a correct check character, or a legacy number."""
    if len(tax_number) == 18:
        head = tax_number[:17]
        if any(char not in _ALPHABET for char in tax_number):
            return False
        return check_character(head) == tax_number[17]
    return _LEGACY.fullmatch(tax_number) is not None


def make_tax_number(serial: int, *, region: str = "110108") -> str:
    """A valid credit code (a Beijing company by default) that differs for every `serial`."""
    head = f"91{region}{serial % 10**9:09d}"
    return head + check_character(head)


def buyer_fail_cause(buyer_tax_num: str) -> str | None:
    """Why issuing to this buyer fails, or None. No number at all is an individual (个人): fine."""
    if buyer_tax_num == "" or is_valid_tax_number(buyer_tax_num):
        return None
    return f"购方税号[{buyer_tax_num}]校验失败：税号格式或校验码错误"
