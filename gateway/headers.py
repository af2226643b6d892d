"""Header handling for a transparent proxy (RFC 9110 §7.6)."""

from __future__ import annotations

import email.utils
import re
import secrets
from collections.abc import Iterable, Mapping

from multidict import CIMultiDict, CIMultiDictProxy

#: Hop-by-hop headers (RFC 9110 §7.6.1), plus the legacy `Proxy-Connection`.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

#: Headers the gateway computes itself rather than copying.
_RECOMPUTED = frozenset({"host", "content-length", "content-encoding"})
_NOT_FORWARDED = HOP_BY_HOP | _RECOMPUTED

REQUEST_ID = "X-Request-Id"
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def end_to_end(
    headers: CIMultiDictProxy[str] | CIMultiDict[str], *, drop: Iterable[str] = ()
) -> CIMultiDict[str]:
    """A copy without hop-by-hop headers, those named in `Connection`, and `drop`."""
    excluded = _NOT_FORWARDED.union(name.lower() for name in drop) if drop else _NOT_FORWARDED
    named = headers.getall("Connection", ())
    if named:
        excluded = excluded.union(
            token.strip().lower() for value in named for token in value.split(",") if token.strip()
        )
    return CIMultiDict([(k, v) for k, v in headers.items() if k.lower() not in excluded])


def request_id(headers: Mapping[str, str]) -> str:
    """The client's `X-Request-Id` when it is sane, else a fresh one."""
    incoming = headers.get(REQUEST_ID)
    if incoming and _REQUEST_ID_OK.match(incoming):
        return incoming
    return secrets.token_hex(16)


def add_forwarded(
    headers: CIMultiDict[str], *, client_ip: str | None, host: str | None, proto: str
) -> None:
    """Append this hop to `X-Forwarded-For` and `Forwarded` (RFC 7239)."""
    peer = client_ip or "unknown"
    previous = headers.get("X-Forwarded-For")
    headers["X-Forwarded-For"] = f"{previous}, {peer}" if previous else peer
    node = f'"[{peer}]"' if ":" in peer else peer
    element = f"for={node};proto={proto}"
    if host and re.match(r"^[A-Za-z0-9.:\[\]-]+$", host):
        element += f';host="{host}"'
    previous_fwd = headers.get("Forwarded")
    headers["Forwarded"] = f"{previous_fwd}, {element}" if previous_fwd else element


def parse_retry_after(value: str | None, now_wall: float) -> float | None:
    """Seconds to wait from a `Retry-After` value (delay-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    when = parse_http_date(value)
    if when is None:
        return None
    return max(0.0, when - now_wall)


def parse_http_date(value: str | None) -> float | None:
    """Unix seconds of an HTTP-date (RFC 9110 IMF-fixdate, e.g. a `Date` header), or None."""
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return when.timestamp()
