"""Operation classification: which configured operation a request is, and its kind
(docs/design.md#outcomes).

A request is matched against each configured `OperationRule` in order; the first that matches wins.
Rules look at the HTTP method, the path, header values and values inside the JSON body.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from gateway.config import OperationConfig
from gateway.errors import BadRequest, JsonLimitExceeded, OperationNotAllowed
from gateway.jsonpointer import MISSING, JsonPointer


class OperationKind(StrEnum):
    SUBMIT = "submit"
    READ = "read"
    PASSTHROUGH = "passthrough"


@dataclass(frozen=True, slots=True)
class Operation:
    """What a request is, as far as resilience is concerned."""

    name: str
    kind: OperationKind
    business_key: JsonPointer | None = None
    ordering_key: JsonPointer | None = None


#: The operation of a request that matched no rule, when unmatched requests pass through.
UNMATCHED = Operation(name="unmatched", kind=OperationKind.PASSTHROUGH)


@dataclass(frozen=True, slots=True)
class JsonLimits:
    """How deep and how big a JSON body the gateway parses (`limits.max_json_*`)."""

    max_depth: int = 64
    max_values: int = 100_000


#: Where a JSON body's structure is: brackets, commas and the quotes that open strings.
_STRUCTURE = re.compile(r'[\[\]{},"]')
#: The rest of a string after its opening quote, through its closing quote (possessive: one
#: pass, however hostile the string).
_STRING_REST = re.compile(r'(?:[^"\\]|\\.)*+"', re.DOTALL)


def check_json_limits(text: str, limits: JsonLimits) -> None:
    """Raise `JsonLimitExceeded` when `text` nests deeper than `limits.max_depth` or holds more
    than `limits.max_values` values, without parsing it (no recursion: a document thousands of
    levels deep is refused before the recursive parser sees it).

    Values are counted as commas + opening brackets + 1 outside strings: every array element
    and object member, and the document itself (an empty `[]` or `{}` counts as one more).
    """
    if text.count("[") + text.count("{") <= limits.max_depth and (
        text.count(",") + text.count("[") + text.count("{") < limits.max_values
    ):
        return  # cannot exceed either limit, whatever the strings hold
    depth = 0
    values = 1
    position = 0
    search = _STRUCTURE.search
    while (found := search(text, position)) is not None:
        char = found.group()
        position = found.end()
        if char == '"':
            rest = _STRING_REST.match(text, position)
            if rest is None:
                return  # an unterminated string: not JSON, which the parser reports
            position = rest.end()
        elif char in "[{":
            depth += 1
            values += 1
            if depth > limits.max_depth:
                raise JsonLimitExceeded(
                    f"the JSON body is nested more than {limits.max_depth} levels deep "
                    "(limits.max_json_depth); nothing was sent"
                )
        elif char == ",":
            values += 1
        else:
            depth -= 1
        if values > limits.max_values:
            raise JsonLimitExceeded(
                f"the JSON body holds more than {limits.max_values} values "
                "(limits.max_json_values); nothing was sent"
            )


class RequestBody:
    """A request body, parsed as JSON at most once and only when something asks."""

    __slots__ = ("_limits", "_parsed", "raw")

    def __init__(self, raw: bytes, limits: JsonLimits | None = None) -> None:
        self.raw = raw
        self._limits = limits or JsonLimits()
        self._parsed: Any = MISSING

    def json(self) -> Any:
        """The parsed body; raises `BadRequest` when it is not JSON, `JsonLimitExceeded` when it
        is deeper or bigger than the limits (checked before parsing)."""
        if self._parsed is MISSING:
            try:
                text = self.raw.decode(json.detect_encoding(self.raw))
            except UnicodeDecodeError as exc:
                raise BadRequest(f"the request body is not valid JSON: {exc}") from None
            check_json_limits(text, self._limits)
            try:
                self._parsed = json.loads(text)
            except (ValueError, RecursionError) as exc:  # JSONDecodeError, too many digits
                raise BadRequest(f"the request body is not valid JSON: {exc}") from None
        return self._parsed

    def json_or_missing(self) -> Any:
        """The parsed body, or `MISSING` when it is not JSON (over the limits still raises)."""
        try:
            return self.json()
        except JsonLimitExceeded:
            raise
        except BadRequest:
            return MISSING


@dataclass(frozen=True, slots=True)
class OperationRule:
    operation: Operation
    method: str | None
    path: str | None
    headers: tuple[tuple[str, str], ...]
    body: tuple[tuple[JsonPointer, Any], ...]

    @classmethod
    def from_config(cls, config: OperationConfig) -> OperationRule:
        return cls(
            operation=Operation(
                name=config.name,
                kind=OperationKind(config.kind),
                business_key=config.business_key,
                ordering_key=config.ordering_key,
            ),
            method=config.match.method,
            path=config.match.path,
            headers=tuple((k.lower(), v) for k, v in config.match.headers.items()),
            body=tuple((m.pointer, m.equals) for m in config.match.body),
        )

    def matches(
        self, method: str, path: str, headers: Mapping[str, str], body: RequestBody
    ) -> bool:
        return self.matches_head(method, path, headers) and self.matches_body(body)

    def matches_head(self, method: str, path: str, headers: Mapping[str, str]) -> bool:
        """Whether the method, path and headers match (the body is not looked at)."""
        if self.method is not None and method != self.method:
            return False
        if self.path is not None:
            if self.path.endswith("*"):
                if not path.startswith(self.path[:-1]):
                    return False
            elif path != self.path:
                return False
        return all(headers.get(name) == value for name, value in self.headers)

    def matches_body(self, body: RequestBody) -> bool:
        if self.body:
            document = body.json_or_missing()
            if document is MISSING:
                return False
            for pointer, expected in self.body:
                found = pointer.resolve(document)
                if found is MISSING or (expected is not None and found != expected):
                    return False
        return True


class Classifier:
    """Maps requests to operations; rules are tried in configuration order."""

    def __init__(self, rules: Sequence[OperationRule], *, reject_unmatched: bool) -> None:
        self._rules = tuple(rules)
        self._reject_unmatched = reject_unmatched
        #: Headers some rule matches on (lower case): each must come at most once in a request.
        self.header_names = frozenset(name for rule in self._rules for name, _ in rule.headers)

    @classmethod
    def from_config(cls, operations: Sequence[OperationConfig], *, unmatched: str) -> Classifier:
        return cls(
            [OperationRule.from_config(op) for op in operations],
            reject_unmatched=unmatched == "reject",
        )

    def candidates(
        self, method: str, path: str, headers: Mapping[str, str]
    ) -> tuple[OperationRule, ...]:
        """The rules the request's head (method, path, headers with lower-case names) matches,
        before its body is read.

        Raises `OperationNotAllowed` when there are none and unmatched requests are rejected:
        an unknown `method` header is refused before its body is read or parsed.
        """
        found = tuple(rule for rule in self._rules if rule.matches_head(method, path, headers))
        if not found and self._reject_unmatched:
            raise self._not_allowed(method, path)
        return found

    def classify(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: RequestBody,
        candidates: Sequence[OperationRule] | None = None,
    ) -> Operation:
        """The matching operation; `headers` must have lower-case names; `candidates`: what
        `candidates` found for this request (else every rule is tried).

        Raises `OperationNotAllowed` for an unmatched request when configured to reject.
        """
        if candidates is None:
            candidates = self.candidates(method, path, headers)
        for rule in candidates:
            if rule.matches_body(body):
                return rule.operation
        if self._reject_unmatched:
            raise self._not_allowed(method, path)
        return UNMATCHED

    @staticmethod
    def _not_allowed(method: str, path: str) -> OperationNotAllowed:
        return OperationNotAllowed(
            f"{method} {path} matches no configured operation and this gateway rejects "
            "unmatched requests; check the 'method' header or ask the operator to add it "
            "to 'operations'"
        )
