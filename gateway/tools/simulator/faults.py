"""Fault rules: what can go wrong, on which operations, when, how often, and how many times.

A rule is posted as JSON to `/_sim/faults` (see `parse_fault_rule` for the schema). Every rule has
a window: it starts `after_s` seconds after it was added and ends `duration_s` later (never, if
null) or once it has fired `count` times. While active it fires on a matching call with
`probability`. At most one rule fires per call and stage: the oldest one that matches and wins its
roll. The stage decides where in a call a rule acts:

    LISTENER  refuse            the API listener is closed for the whole window
    BEFORE    reset, http_error, busy, slow, hang, rate_limit, quota
                                answered instead of (slow: before) processing the call
    TOKEN     token_expiry p<1  a call with a valid token is answered 070301
    REVOKE    token_expiry p=1  once, when the window starts: every token issued so far is revoked
    AFTER     answer_lost, truncate
                                the call is processed, then its answer is lost or cut short
"""

# ruff: noqa: S105  # names containing "TOKEN" hold fault kinds and stages, not secrets

from __future__ import annotations

import enum
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

#: The operation name that stands for the token endpoint in `operations`.
TOKEN_OPERATION: Final = "accessToken"


class FaultKind(enum.StrEnum):
    REFUSE = "refuse"
    RESET = "reset"
    HTTP_ERROR = "http_error"
    BUSY = "busy"
    SLOW = "slow"
    HANG = "hang"
    ANSWER_LOST = "answer_lost"
    RATE_LIMIT = "rate_limit"
    TOKEN_EXPIRY = "token_expiry"
    TRUNCATE = "truncate"
    QUOTA = "quota"


class Stage(enum.Enum):
    LISTENER = "listener"
    BEFORE = "before"
    TOKEN = "token"
    REVOKE = "revoke"
    AFTER = "after"


class FaultSpecError(ValueError):
    """A fault rule posted to `/_sim/faults` is invalid; the message says which field and why."""


ParamValue = float | int | str
#: Checks one field of a posted rule (name, raw JSON value) and returns its value.
ParamParser = Callable[[str, object], ParamValue]


def _number(minimum: float, *, strict: bool) -> ParamParser:
    def parse(name: str, value: object) -> ParamValue:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < minimum
            or (strict and value == minimum)
        ):
            bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
            raise FaultSpecError(f"'{name}' must be a number {bound}, got {value!r}")
        return float(value)

    return parse


def _integer(low: int, high: int) -> ParamParser:
    def parse(name: str, value: object) -> ParamValue:
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise FaultSpecError(f"'{name}' must be an integer from {low} to {high}, got {value!r}")
        return value

    return parse


def _choice(*allowed: str) -> ParamParser:
    def parse(name: str, value: object) -> ParamValue:
        if value not in allowed:
            raise FaultSpecError(f"'{name}' must be one of {', '.join(allowed)}; got {value!r}")
        return str(value)

    return parse


#: Parameters each kind takes besides the common fields: name -> (default, parser).
KIND_PARAMS: Final[Mapping[FaultKind, Mapping[str, tuple[ParamValue, ParamParser]]]] = {
    FaultKind.HTTP_ERROR: {"status": (503, _integer(400, 599))},
    FaultKind.SLOW: {"delay_s": (2.0, _number(0, strict=True))},
    FaultKind.HANG: {"hang_s": (3600.0, _number(0, strict=True))},
    FaultKind.ANSWER_LOST: {
        "mode": ("reset", _choice("reset", "hang")),
        "hang_s": (3600.0, _number(0, strict=True)),
    },
    FaultKind.RATE_LIMIT: {"retry_after_s": (1, _integer(0, 86_400))},
}

_COMMON_FIELDS: Final = ("kind", "operations", "probability", "after_s", "duration_s", "count")


@dataclass(slots=True)
class FaultRule:
    """One active or pending fault. Times are monotonic seconds of the simulator's clock."""

    kind: FaultKind
    created_at: float
    #: Given by `FaultBook.add`.
    id: str = ""
    operations: tuple[str, ...] | None = None
    probability: float = 1.0
    after_s: float = 0.0
    duration_s: float | None = None
    count: int | None = None
    params: dict[str, ParamValue] = field(default_factory=dict)
    hits: int = 0

    @property
    def stage(self) -> Stage:
        match self.kind:
            case FaultKind.REFUSE:
                return Stage.LISTENER
            case FaultKind.TOKEN_EXPIRY:
                return Stage.REVOKE if self.probability >= 1 else Stage.TOKEN
            case FaultKind.ANSWER_LOST | FaultKind.TRUNCATE:
                return Stage.AFTER
            case _:
                return Stage.BEFORE

    @property
    def starts_at(self) -> float:
        return self.created_at + self.after_s

    @property
    def ends_at(self) -> float | None:
        return None if self.duration_s is None else self.starts_at + self.duration_s

    def is_over(self, now: float) -> bool:
        """Its window has passed or it has fired `count` times."""
        ends_at = self.ends_at
        if ends_at is not None and now >= ends_at:
            return True
        return self.count is not None and self.hits >= self.count

    def is_active(self, now: float) -> bool:
        return self.starts_at <= now and not self.is_over(now)

    def matches(self, operation: str) -> bool:
        return self.operations is None or operation in self.operations

    def number(self, name: str) -> float:
        """A numeric parameter of this rule's kind."""
        return float(self.params[name])

    def text(self, name: str) -> str:
        """A textual parameter of this rule's kind."""
        return str(self.params[name])

    def to_json(self, now: float) -> dict[str, Any]:
        """The rule as listed by `GET /_sim/faults`."""
        return {
            "id": self.id,
            "kind": self.kind.value,
            "operations": list(self.operations) if self.operations is not None else None,
            "probability": self.probability,
            "after_s": self.after_s,
            "duration_s": self.duration_s,
            "count": self.count,
            **self.params,
            "hits": self.hits,
            "state": "active" if self.is_active(now) else "pending",
            "starts_in_s": round(max(0.0, self.starts_at - now), 3),
        }


def parse_fault_rule(data: object, *, now: float) -> FaultRule:
    """Validate a rule as posted to `/_sim/faults`; raises `FaultSpecError` naming the problem.

    Schema (all fields but `kind` optional):

        kind          one of FaultKind
        operations    null (every operation) or a list of method names; "accessToken" is the
                      token endpoint
        probability   0 < p <= 1, default 1
        after_s       >= 0, default 0: delay before the window opens
        duration_s    > 0 or null (default): length of the window
        count         integer >= 1 or null (default): the rule ends after firing this often
        ...           the kind's own parameters (`KIND_PARAMS`)
    """
    if not isinstance(data, dict):
        raise FaultSpecError("a fault rule must be a JSON object")
    raw_kind = data.get("kind")
    try:
        kind = FaultKind(str(raw_kind))
    except ValueError:
        choices = ", ".join(kind.value for kind in FaultKind)
        raise FaultSpecError(f"'kind' must be one of {choices}; got {raw_kind!r}") from None
    own = KIND_PARAMS.get(kind, {})
    unknown = sorted(set(data) - set(_COMMON_FIELDS) - set(own))
    if unknown:
        allowed = ", ".join((*_COMMON_FIELDS, *own))
        raise FaultSpecError(
            f"unknown field(s) {', '.join(unknown)} for kind {kind}; allowed: {allowed}"
        )

    rule = FaultRule(
        kind=kind,
        created_at=now,
        operations=_operations(data.get("operations")),
        probability=float(_number(0, strict=True)("probability", data.get("probability", 1.0))),
        after_s=float(_number(0, strict=False)("after_s", data.get("after_s", 0.0))),
        duration_s=_optional(data, "duration_s", _number(0, strict=True)),
        count=_optional_int(data, "count"),
        params={
            name: parse(name, data.get(name, default)) for name, (default, parse) in own.items()
        },
    )
    if rule.probability > 1:
        raise FaultSpecError(f"'probability' must be at most 1, got {rule.probability!r}")
    _check_combination(rule)
    return rule


def _operations(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(item, str) and item for item in value)
    ):
        raise FaultSpecError("'operations' must be null or a non-empty list of method names")
    return tuple(value)


def _optional(data: dict[str, Any], name: str, parse: ParamParser) -> float | None:
    value = data.get(name)
    return None if value is None else float(parse(name, value))


def _optional_int(data: dict[str, Any], name: str) -> int | None:
    value = data.get(name)
    return None if value is None else int(_integer(1, 10**9)(name, value))


def _check_combination(rule: FaultRule) -> None:
    # A refused listener is closed as a whole: nothing per call can be chosen or counted.
    if rule.kind is FaultKind.REFUSE and (
        rule.operations is not None or rule.probability != 1 or rule.count is not None
    ):
        raise FaultSpecError(
            "refuse closes the whole API listener: 'operations' and 'count' must be null"
            " and 'probability' 1; bound it with 'after_s' and 'duration_s'"
        )
    if rule.kind is FaultKind.TOKEN_EXPIRY:
        if rule.operations is not None and TOKEN_OPERATION in rule.operations:
            raise FaultSpecError("token_expiry cannot apply to the token endpoint 'accessToken'")
        if rule.probability == 1 and (
            rule.operations is not None or rule.count is not None or rule.duration_s is not None
        ):
            raise FaultSpecError(
                "token_expiry with probability 1 revokes every token once, when its window"
                " opens: 'operations', 'count' and 'duration_s' must be null"
            )


class FaultBook:
    """The active and pending rules, in the order they were added."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._rules: list[FaultRule] = []
        self._next_id = 1

    def add(self, rule: FaultRule) -> str:
        """Install a rule, giving it an id ("f1", "f2", ...; never reused, even after a reset)."""
        rule.id = f"f{self._next_id}"
        self._next_id += 1
        self._rules.append(rule)
        return rule.id

    def remove(self, rule_id: str) -> bool:
        """Remove one rule; False if there is none with this id."""
        kept = [rule for rule in self._rules if rule.id != rule_id]
        removed = len(kept) != len(self._rules)
        self._rules = kept
        return removed

    def clear(self) -> int:
        """Remove every rule; returns how many there were."""
        removed = len(self._rules)
        self._rules = []
        return removed

    def rules(self, now: float) -> list[FaultRule]:
        """Rules not over yet (expired ones are forgotten here)."""
        self._rules = [rule for rule in self._rules if not rule.is_over(now)]
        return list(self._rules)

    def pick(self, stage: Stage, operation: str, now: float) -> FaultRule | None:
        """The rule that fires on this call at this stage, if any; counts the hit."""
        for rule in self.rules(now):
            if rule.stage is not stage or not rule.is_active(now) or not rule.matches(operation):
                continue
            # Roll only for rules that could fire, so adding an unrelated rule does not change
            # which calls a seeded run faults.
            if rule.probability < 1 and self._rng.random() >= rule.probability:
                continue
            rule.hits += 1
            return rule
        return None

    def refusing(self, now: float) -> bool:
        """Whether a `refuse` window is open."""
        return any(rule.stage is Stage.LISTENER and rule.is_active(now) for rule in self.rules(now))

    def take_due_revocations(self, now: float) -> int:
        """Remove the one-shot `token_expiry` rules whose window has opened; returns how many."""
        due = [r for r in self._rules if r.stage is Stage.REVOKE and r.starts_at <= now]
        for rule in due:
            rule.hits += 1
        self._rules = [rule for rule in self._rules if rule not in due]
        return len(due)

    def next_listener_change(self, now: float) -> float | None:
        """The next time a `refuse` window opens or closes, if any is scheduled."""
        moments: list[float] = []
        for rule in self.rules(now):
            if rule.stage is Stage.LISTENER:
                ends_at = rule.ends_at
                moments.extend(t for t in (rule.starts_at, ends_at) if t is not None and t > now)
        return min(moments, default=None)
