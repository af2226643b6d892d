"""Named scenarios: fault schedules worth a name, installed as ordinary fault rules.

    outage     the platform refuses connections `down` s long, starting `after` s from now
               (defaults after=10, down=20)
    flapping   `cycles` times: down `down` s, then up `up` s, starting `after` s from now
               (defaults after=5, down=3, up=3, cycles=5; cycles at most 100)

On the command line: `--scenario outage` or with overrides `--scenario flapping:down=2,cycles=10`.
Over HTTP: `POST /_sim/scenarios/{name}` with the overrides as a JSON object.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final


class ScenarioError(ValueError):
    """Unknown scenario or bad parameter; the message says which."""


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    summary: str
    defaults: Mapping[str, float]
    rules: Callable[[Mapping[str, float]], list[dict[str, Any]]]


def _outage(p: Mapping[str, float]) -> list[dict[str, Any]]:
    return [{"kind": "refuse", "after_s": p["after"], "duration_s": p["down"]}]


def _flapping(p: Mapping[str, float]) -> list[dict[str, Any]]:
    period = p["down"] + p["up"]
    return [
        {"kind": "refuse", "after_s": p["after"] + cycle * period, "duration_s": p["down"]}
        for cycle in range(int(p["cycles"]))
    ]


SCENARIOS: Final[Mapping[str, Scenario]] = {
    "outage": Scenario(
        "outage",
        "refuse connections for `down` s after `after` s",
        {"after": 10.0, "down": 20.0},
        _outage,
    ),
    "flapping": Scenario(
        "flapping",
        "`cycles` times down `down` s / up `up` s, from `after` s",
        {"after": 5.0, "down": 3.0, "up": 3.0, "cycles": 5.0},
        _flapping,
    ),
}
_MAX_CYCLES: Final = 100


def scenario_rules(
    name: str, overrides: Mapping[str, object] | None = None
) -> list[dict[str, Any]]:
    """The fault rules (as `/_sim/faults` JSON) of a scenario with some parameters overridden."""
    scenario = SCENARIOS.get(name)
    if scenario is None:
        raise ScenarioError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    params = dict(scenario.defaults)
    for key, value in (overrides or {}).items():
        if key not in params:
            raise ScenarioError(
                f"scenario {name!r} has no parameter {key!r}; it takes {', '.join(params)}"
            )
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ScenarioError(f"scenario parameter {key!r} must be a number, got {value!r}")
        params[key] = float(value)
    if params["after"] < 0 or any(params[key] <= 0 for key in params if key != "after"):
        raise ScenarioError(f"scenario {name!r}: 'after' must be >= 0 and the others > 0")
    if "cycles" in params and (
        params["cycles"] != int(params["cycles"]) or params["cycles"] > _MAX_CYCLES
    ):
        raise ScenarioError(
            f"scenario {name!r}: 'cycles' must be a whole number up to {_MAX_CYCLES}"
        )
    return scenario.rules(params)


def parse_scenario(text: str) -> tuple[str, dict[str, float]]:
    """`NAME` or `NAME:key=value,...` as given to `--scenario`."""
    name, _, rest = text.partition(":")
    overrides: dict[str, float] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError(item)
            overrides[key.strip()] = float(value)
        except ValueError:
            raise ScenarioError(f"scenario parameter must be key=number, got {item!r}") from None
    scenario_rules(name.strip(), overrides)  # validate now, not when it is installed
    return name.strip(), overrides
