"""Masking for `viewer` tokens: personal and banking data hidden in admin answers.

Which fields are sensitive and how a value is masked is defined once, in `gateway.sensitive`
(shared with the logs, exports and problem details); what is particular to the admin API lives
here: payload edits in the audit log, and credential headers, which nobody sees whatever the role.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gateway.sensitive import is_sensitive_pointer, mask, mask_value

#: Header values never shown, whatever the role.
SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"}
)


def mask_edit(details: dict[str, Any]) -> dict[str, Any]:
    """Audit details of a payload edit: `before`/`after` masked when the pointer names a
    sensitive field (the values themselves carry no key to recognise them by)."""
    pointer = details.get("pointer")
    masked = mask(details)
    if isinstance(pointer, str) and is_sensitive_pointer(pointer):
        for side in ("before", "after"):
            if side in masked:
                masked[side] = mask_value(masked[side])
    return dict(masked)


def visible_headers(headers: Iterable[tuple[str, str]]) -> list[list[str]]:
    """Stored request headers with credentials hidden."""
    return [[name, "***" if name.lower() in SECRET_HEADERS else value] for name, value in headers]
