"""The OpenAPI document kept in the repo describes exactly the routes the app serves."""

from __future__ import annotations

import json

from gateway.ops.admin.middleware import PUBLIC_PATHS, ROUTE_ROLES
from tests.support.processes import ROOT
from tests.unit.ops.admin.conftest import VIEWER, AdminClient
from tests.unit.ops.admin.routes import DOCUMENT, ROUTES

REPO_COPY = ROOT / "gateway" / "ops" / "admin" / "openapi.json"


def app_routes(client: AdminClient) -> set[tuple[str, str]]:
    """The API's routes; Prometheus' public `/metrics` is exposition, not part of the API."""
    return {
        (route.method, route.resource.canonical)
        for route in client.app.router.routes()
        if route.resource is not None and route.resource.canonical not in PUBLIC_PATHS
    }


async def test_document_lists_exactly_the_served_routes(client: AdminClient) -> None:
    """Every route the app registers is documented, and every documented route is served."""
    documented = {(method, path) for method, path, _ in ROUTES}
    served = app_routes(client)
    assert set() == served - documented, "served but not documented"
    assert set() == documented - served, "documented but not served"


async def test_document_states_the_role_each_route_enforces(client: AdminClient) -> None:
    """`x-required-role` in the document is the role the app checks for that route."""
    enforced = {
        (route.method, route.resource.canonical): role.value
        for route, role in client.app[ROUTE_ROLES].items()
        if route.resource is not None
    }
    assert {(m, p): role for m, p, role in ROUTES} == enforced


def test_reads_are_for_viewers_and_changes_for_operators() -> None:
    """The contract's rule: GET is viewer work, except the export (it holds whole payloads)."""
    for method, path, role in ROUTES:
        expected = "viewer" if method == "GET" and path != "/admin/v1/export" else "operator"
        assert expected == role, (method, path)


def test_document_is_openapi_3_with_bearer_security() -> None:
    """An OpenAPI 3.0 document whose default security is the bearer scheme."""
    assert DOCUMENT["openapi"].startswith("3.0.")
    assert [{"bearer": []}] == DOCUMENT["security"]
    assert "bearer" == DOCUMENT["components"]["securitySchemes"]["bearer"]["scheme"]


def test_every_reference_resolves() -> None:
    """Every `$ref` in the document points at something the document defines."""
    refs: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(DOCUMENT)
    assert refs
    for ref in refs:
        node: object = DOCUMENT
        for part in ref.removeprefix("#/").split("/"):
            assert isinstance(node, dict), ref
            assert part in node, ref
            node = node[part]


async def test_the_document_is_served(client: AdminClient) -> None:
    """GET /admin/v1/openapi.json answers the document kept in the repository."""
    response = await client.get("/admin/v1/openapi.json", headers=VIEWER)
    assert 200 == response.status
    assert json.loads(REPO_COPY.read_text()) == await response.json()
