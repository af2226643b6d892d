"""The admin routes as the OpenAPI document lists them (a test checks it lists exactly the
app's routes), for tests that must cover every route."""

from __future__ import annotations

import json
from typing import Any

from gateway.ops.admin import openapi_document

DOCUMENT: dict[str, Any] = json.loads(openapi_document())
#: (method, path template, required role) for every documented operation.
ROUTES: list[tuple[str, str, str]] = sorted(
    (method.upper(), path, operation["x-required-role"])
    for path, methods in DOCUMENT["paths"].items()
    for method, operation in methods.items()
)


def concrete(path: str) -> str:
    """A request path for a route template."""
    return (
        path.replace("{id}", "sub_0000000000000000")
        .replace("{tenant}", "demo")
        .replace("{key_id}", "000000000000")
    )


def route_id(route: tuple[str, str, str]) -> str:
    return f"{route[0]} {route[1]}"
