"""Errors the gateway itself produces, as `application/problem+json` (RFC 9457)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

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
    """A problem+json response; `slug` names the problem type (docs/problems.md lists them)."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
        "request_id": request_id,
    }
    if extra:
        body.update(extra)
    return web.Response(
        status=status,
        body=json.dumps(body, ensure_ascii=False).encode(),
        content_type=CONTENT_TYPE,
        headers=headers,
    )
