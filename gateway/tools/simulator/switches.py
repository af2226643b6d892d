"""The platform's behaviour that can change while it runs: `GET` and `PATCH /_sim/settings`.

    dedup               true/false    answer E9106 to a reused orderNo; false: issue it again
    lookup_lag_s        number >= 0   queryInvoiceResult lists an invoice this long after accepting
    issue_delay_s       number >= 0   from accepted (20) to issued or failed (22)
    sign_delay_s        number >= 0   from issued to signed: 21 meanwhile, then 2 or 24
    fail_issuance_rate  0 to 1        share of accepted blue invoices that end 22
    fail_signing_rate   0 to 1        share that end 24 (of those that did not fail before)
    disabled_apis       [method, …]   operations answered 070302 (API not enabled)
    isv_codes           {code: tax}   merchants' authorization codes (each usable once), replaced
    isv_withdrawn       [tax, …]      merchants whose refresh tokens are refused (070309)

A `PATCH` names only what changes; anything else is left as it is. `dedup`, `lookup_lag_s` and
`disabled_apis` count for every call from then on; delays and rates for invoices accepted from
then on (an accepted invoice's fate is decided when it is accepted). `POST /_sim/reset` restores
the settings the simulator started with.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, Final

from gateway.tools.simulator.operations import OPERATIONS
from gateway.tools.simulator.platform import PlatformSettings


class SettingsError(ValueError):
    """A settings change is invalid; the message says which field and why."""


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise SettingsError(f"'{name}' must be true or false, got {value!r}")
    return value


def _number(high: float) -> Callable[[str, object], float]:
    def parse(name: str, value: object) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or not 0 <= value <= high
        ):
            bounds = f"from 0 to {high:g}" if math.isfinite(high) else ">= 0"
            raise SettingsError(f"'{name}' must be a number {bounds}, got {value!r}")
        return float(value)

    return parse


def _operations(name: str, value: object) -> frozenset[str]:
    if not isinstance(value, list) or not all(item in OPERATIONS for item in value):
        raise SettingsError(f"'{name}' must be a list of operations ({', '.join(OPERATIONS)})")
    return frozenset(value)


def _codes(name: str, value: object) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(code, str) and code and isinstance(tax, str) and tax
        for code, tax in value.items()
    ):
        raise SettingsError(f"'{name}' must be an object of authorization codes to tax numbers")
    return dict(value)


def _tax_numbers(name: str, value: object) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(tax, str) and tax for tax in value):
        raise SettingsError(f"'{name}' must be a list of tax numbers")
    return frozenset(value)


#: What `PATCH /_sim/settings` may change: the `PlatformSettings` field and how to read it.
SWITCHES: Final[Mapping[str, Callable[[str, object], Any]]] = {
    "dedup": _flag,
    "lookup_lag_s": _number(math.inf),
    "issue_delay_s": _number(math.inf),
    "sign_delay_s": _number(math.inf),
    "fail_issuance_rate": _number(1.0),
    "fail_signing_rate": _number(1.0),
    "disabled_apis": _operations,
    "isv_codes": _codes,
    "isv_withdrawn": _tax_numbers,
}


def switches(settings: PlatformSettings) -> dict[str, Any]:
    """The switchable settings as JSON (what `GET /_sim/settings` answers)."""
    shown: dict[str, Any] = {name: getattr(settings, name) for name in SWITCHES}
    shown["disabled_apis"] = sorted(settings.disabled_apis)
    shown["isv_codes"] = dict(settings.isv_codes)
    shown["isv_withdrawn"] = sorted(settings.isv_withdrawn)
    return shown


def apply_switches(settings: PlatformSettings, change: object) -> PlatformSettings:
    """`settings` with `change` (a JSON object of some of `SWITCHES`) applied; raises
    `SettingsError` naming the first bad field, changing nothing."""
    if not isinstance(change, dict):
        raise SettingsError("the settings change must be a JSON object")
    unknown = sorted(set(change) - set(SWITCHES))
    if unknown:
        raise SettingsError(
            f"cannot change {', '.join(map(repr, unknown))} at run time; "
            f"switchable: {', '.join(SWITCHES)}"
        )
    values = {name: SWITCHES[name](name, value) for name, value in change.items()}
    return dataclasses.replace(settings, **values)
