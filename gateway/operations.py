"""Operation classification: which configured operation a request is, and its kind
(docs/design.md#outcomes).

A request is matched against each configured `OperationRule` in order; the first that matches wins.
Rules look at the HTTP method, the path, header values and values inside the JSON body.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from gateway.config import OperationConfig
from gateway.errors import BadRequest, OperationNotAllowed
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


class RequestBody:
    """A request body, parsed as JSON at most once and only when something asks."""

    __slots__ = ("_parsed", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self._parsed: Any = None

    def json(self) -> Any:
        """The parsed body; raises `BadRequest` when it is not JSON."""
        if self._parsed is None:
            try:
                self._parsed = json.loads(self.raw)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise BadRequest(f"the request body is not valid JSON: {exc}") from None
        return self._parsed

    def json_or_missing(self) -> Any:
        try:
            return self.json()
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
        if self.method is not None and method != self.method:
            return False
        if self.path is not None:
            if self.path.endswith("*"):
                if not path.startswith(self.path[:-1]):
                    return False
            elif path != self.path:
                return False
        for name, value in self.headers:
            if headers.get(name) != value:
                return False
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

    @classmethod
    def from_config(cls, operations: Sequence[OperationConfig], *, unmatched: str) -> Classifier:
        return cls(
            [OperationRule.from_config(op) for op in operations],
            reject_unmatched=unmatched == "reject",
        )

    def classify(
        self, method: str, path: str, headers: Mapping[str, str], body: RequestBody
    ) -> Operation:
        """The matching operation; `headers` must have lower-case names.

        Raises `OperationNotAllowed` for an unmatched request when configured to reject.
        """
        for rule in self._rules:
            if rule.matches(method, path, headers, body):
                return rule.operation
        if self._reject_unmatched:
            raise OperationNotAllowed(
                f"{method} {path} matches no configured operation and this gateway rejects "
                "unmatched requests; check the 'method' header or ask the operator to add it "
                "to 'operations'"
            )
        return UNMATCHED
