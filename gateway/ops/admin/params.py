"""Reading admin requests: filters, pages and JSON bodies, with a 400 naming what is wrong.

The same filter keys arrive as a query string (`GET /submissions?state=dead&tenant=acme`) and as
a JSON object (`POST /replays {"filter": {...}}`); both are read here into a `SubmissionQuery`.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from multidict import MultiMapping

from gateway.clock import iso_utc
from gateway.errors import BadRequest
from gateway.outbox.submissions import SubmissionQuery, SubmissionState

FILTER_KEYS = (
    "state",
    "tenant",
    "operation",
    "error_class",
    "accepted_after",
    "accepted_before",
    "q",
)
PAGE_KEYS = ("limit", "cursor")
DEFAULT_LIMIT = 50
MAX_LIMIT = 500


class InvalidParameter(BadRequest):
    """A query parameter or body field with a bad value; `parameter` names it."""

    def __init__(self, parameter: str, detail: str) -> None:
        super().__init__(f"{parameter}: {detail}")
        self.parameter = parameter


@dataclass(frozen=True, slots=True)
class Filter:
    """A parsed filter: the store query, and the same filter as plain JSON (audit, jobs)."""

    query: SubmissionQuery
    echo: dict[str, Any]


def query_filter(params: MultiMapping[str], *, allowed: Iterable[str] = PAGE_KEYS) -> Filter:
    """The filter in a query string; any key other than a filter key or `allowed` is a 400."""
    known = (*FILTER_KEYS, *allowed)
    for key in params:
        _known_key(key, known, where="")
    values = {
        key: [part for value in params.getall(key) for part in value.split(",")]
        if key == "state"
        else params.getall(key)
        for key in set(params).intersection(FILTER_KEYS)
    }
    return _filter(values, where="")


def body_filter(document: Any, *, where: str = "filter") -> Filter:
    """The filter in a JSON body (`state` may be a string or a list of strings)."""
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise InvalidParameter(where, "must be an object of filter keys")
    values: dict[str, list[Any]] = {}
    for key, value in document.items():
        _known_key(key, FILTER_KEYS, where=where)
        if value is None:
            continue
        if key == "state" and isinstance(value, list):
            values[key] = [part for item in value for part in _split(item, f"{where}.state")]
        elif key == "state":
            values[key] = _split(value, f"{where}.state")
        else:
            values[key] = [value]
    return _filter(values, where=where)


def page(params: MultiMapping[str]) -> tuple[int, str | None]:
    """`limit` (1 to 500, default 50) and `cursor` from a query string."""
    raw = params.get("limit")
    limit = DEFAULT_LIMIT
    if raw is not None:
        try:
            limit = int(raw)
        except ValueError:
            raise InvalidParameter("limit", f"not a whole number: {raw!r}") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidParameter("limit", f"must be between 1 and {MAX_LIMIT}, got {limit}")
    cursor = params.get("cursor")
    if cursor is not None and not cursor:
        raise InvalidParameter("cursor", "is empty; pass the next_cursor of the previous page")
    return limit, cursor


async def json_body(request: web.Request, fields: Iterable[str]) -> dict[str, Any]:
    """The request's JSON object (an empty body is `{}`); unknown fields are a 400."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise BadRequest("the body must be a JSON object")
    names = tuple(fields)
    for key in document:
        _known_key(key, names, where="")
    return document


def text_field(body: Mapping[str, Any], name: str) -> str | None:
    """An optional string field of a JSON body."""
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidParameter(name, f"must be a string, got {type(value).__name__}")
    return value


def _filter(values: Mapping[str, list[Any]], *, where: str) -> Filter:
    def name(key: str) -> str:
        return f"{where}.{key}" if where else key

    echo: dict[str, Any] = {}
    states: list[SubmissionState] = []
    for raw in values.get("state", []):
        text = str(raw).strip()
        if not text:
            continue
        try:
            state = SubmissionState(text)
        except ValueError:
            choices = ", ".join(s.value for s in SubmissionState)
            raise InvalidParameter(
                name("state"), f"no state {text!r}; states are {choices}"
            ) from None
        if state not in states:
            states.append(state)
    if states:
        echo["state"] = [s.value for s in states]
    text_values: dict[str, str] = {}
    for key in ("tenant", "operation", "error_class", "q"):
        if key in values:
            text_values[key] = echo[key] = _one_text(values[key], name(key))
    times: dict[str, float] = {}
    for key in ("accepted_after", "accepted_before"):
        if key in values:
            times[key] = _one_time(values[key], name(key))
            echo[key] = iso_utc(times[key])
    after, before = times.get("accepted_after"), times.get("accepted_before")
    if after is not None and before is not None and after >= before:
        raise InvalidParameter(name("accepted_before"), "must be later than accepted_after")
    query = SubmissionQuery(
        states=tuple(states),
        tenant=text_values.get("tenant"),
        operation=text_values.get("operation"),
        error_class=text_values.get("error_class"),
        accepted_after=after,
        accepted_before=before,
        text=text_values.get("q"),
    )
    return Filter(query=query, echo=echo)


def _one(values: list[Any], name: str) -> Any:
    if len(values) != 1:
        raise InvalidParameter(name, "give it once")
    return values[0]


def _one_text(values: list[Any], name: str) -> str:
    value = _one(values, name)
    if not isinstance(value, str):
        raise InvalidParameter(name, f"must be a string, got {type(value).__name__}")
    if not value.strip():
        raise InvalidParameter(name, "is empty")
    return value.strip()


def _one_time(values: list[Any], name: str) -> float:
    """ISO 8601 (UTC unless it says otherwise) or unix seconds."""
    value = _one(values, name)
    if isinstance(value, bool):
        raise InvalidParameter(name, "must be a time, not a boolean")
    if isinstance(value, int | float):
        return _finite(float(value), name)
    if not isinstance(value, str):
        raise InvalidParameter(name, f"must be a time, got {type(value).__name__}")
    text = value.strip()
    try:
        return _finite(float(text), name)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidParameter(
            name,
            f"not a time: {value!r} (use ISO 8601, e.g. 2026-11-27T10:00:00Z, or unix seconds)",
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _finite(seconds: float, name: str) -> float:
    """`seconds` if it is a time a date can show (years 1 to 9999), else a 400."""
    if not math.isfinite(seconds):
        raise InvalidParameter(name, f"not a time: {seconds}")
    try:
        datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        raise InvalidParameter(name, f"not a time: {seconds} is out of range") from None
    return seconds


def _split(value: Any, name: str) -> list[str]:
    if not isinstance(value, str):
        raise InvalidParameter(name, f"must be a string or a list of strings, got {value!r}")
    return value.split(",")


def _known_key(key: str, known: tuple[str, ...], *, where: str) -> None:
    if key in known:
        return
    hint = difflib.get_close_matches(key, known, n=1)
    suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
    name = f"{where}.{key}" if where else key
    raise InvalidParameter(name, f"unknown parameter{suggestion}; known: {', '.join(known)}")
