"""Errors the gateway itself produces, as `application/problem+json` (RFC 9457).

A problem's detail may echo what the client sent (a value, a key, a line of an import): it is
masked like a log line (`gateway.sensitive`), so a problem never shows personal data whole.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from gateway.errors import ClientRequestError, StoreError
from gateway.sensitive import ECHO_MASKER

PROBLEM_TYPE_BASE = "urn:invoice-gateway:problem:"
CONTENT_TYPE = "application/problem+json"


def problem_response(
    *,
    status: int,
    slug: str,
    title: str,
    detail: str,
    request_id: str,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> web.Response:
    """A problem+json response; `slug` names the problem type (docs/problems.md lists them).
    `detail` and `extra` are masked (sensitive fields by name, other text by shape)."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + slug,
        "title": title,
        "status": status,
        "detail": ECHO_MASKER(detail),
        "request_id": request_id,
    }
    if extra:
        body.update(ECHO_MASKER.document(dict(extra)))
    return web.Response(
        status=status,
        body=json.dumps(body, ensure_ascii=False).encode(),
        content_type=CONTENT_TYPE,
        headers=headers,
    )


def client_error(
    exc: ClientRequestError,
    request_id: str,
    *,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> web.Response:
    """The problem+json for a request the gateway refuses (the exception knows its status)."""
    return problem_response(
        status=exc.status,
        slug=exc.slug,
        title=exc.title,
        detail=exc.detail,
        request_id=request_id,
        headers=headers,
        extra=extra,
    )


def store_unavailable(
    exc: StoreError, request_id: str, *, title: str, consequence: str
) -> web.Response:
    """503 when the store cannot be used; `consequence` says what that meant for the caller."""
    return problem_response(
        status=503,
        slug="store-unavailable",
        title=title,
        detail=f"the gateway cannot use its store right now ({exc}); {consequence}",
        request_id=request_id,
        headers={"Retry-After": "5"},
    )
