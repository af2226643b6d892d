"""Every route refuses a missing or unknown token (401) and a viewer on operator work (403)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import open_gateway
from gateway.config import AdminTokenConfig, SecretRef, parse_config
from gateway.ops.admin import AdminTokens, admin_app
from gateway.ops.admin.middleware import PUBLIC_PATHS
from tests.unit.ops.admin.conftest import (
    ENVIRON,
    OPERATOR,
    VIEWER,
    AdminClient,
    Platform,
    problem,
    raw_config,
)
from tests.unit.ops.admin.routes import ROUTES, concrete, route_id

CHALLENGE = 'Bearer realm="invoice-gateway-admin"'
ROUTE = pytest.mark.parametrize("route", ROUTES, ids=route_id)


@ROUTE
async def test_no_token_is_401_with_a_bearer_challenge(
    client: AdminClient, route: tuple[str, str, str]
) -> None:
    """Without a token every route answers 401 problem+json and asks for a bearer token."""
    method, path, _ = route
    response = await client.request(method, concrete(path))
    assert 401 == response.status
    assert CHALLENGE == response.headers["WWW-Authenticate"]
    assert (await problem(response))["type"].endswith(":unauthenticated")


@ROUTE
@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer not-a-token",
        "Bearer op-secret-tokenX",
        "Basic b3A6c2VjcmV0",
        "Bearer ",
        "op-secret-token",
    ],
)
async def test_wrong_token_is_401(
    client: AdminClient, route: tuple[str, str, str], authorization: str
) -> None:
    """An unknown token, another scheme or a bare token is refused on every route."""
    method, path, _ = route
    response = await client.request(
        method, concrete(path), headers={"Authorization": authorization}
    )
    assert 401 == response.status
    assert response.headers["WWW-Authenticate"].startswith(CHALLENGE)
    await problem(response)


@ROUTE
async def test_viewer_is_403_exactly_on_operator_routes(
    client: AdminClient, route: tuple[str, str, str]
) -> None:
    """A viewer token gets 403 on operator routes and passes authorization on viewer routes."""
    method, path, role = route
    response = await client.request(method, concrete(path), headers=VIEWER)
    if role == "operator":
        assert 403 == response.status
        assert (await problem(response))["type"].endswith(":forbidden")
    else:
        assert response.status not in (401, 403), await response.text()


@ROUTE
async def test_operator_passes_everywhere(client: AdminClient, route: tuple[str, str, str]) -> None:
    """An operator token is never refused for its role."""
    method, path, _ = route
    response = await client.request(method, concrete(path), headers=OPERATOR)
    assert response.status not in (401, 403), await response.text()


async def test_every_registered_route_needs_a_token(client: AdminClient) -> None:
    """Walking the app's own router (not the document): no route answers without a token,
    except the deliberately public ones (Prometheus' `/metrics`)."""
    routes = [
        (r.method, r.resource.canonical)
        for r in client.app.router.routes()
        if r.resource and r.resource.canonical not in PUBLIC_PATHS
    ]
    assert routes
    for method, path in routes:
        response = await client.request(method, concrete(path))
        assert 401 == response.status, (method, path)


async def test_metrics_is_the_only_public_path(client: AdminClient) -> None:
    """`/metrics` answers without a token (for Prometheus); nothing else is public."""
    response = await client.get("/metrics")
    assert 200 == response.status
    assert "gateway_build_info" in await response.text()
    assert frozenset({"/metrics"}) == PUBLIC_PATHS
    assert 401 == (await client.post("/metrics")).status


async def test_unknown_paths_need_a_token_too(client: AdminClient) -> None:
    """A path that is no route is 401 without a token (nothing is revealed), 404 with one."""
    assert 401 == (await client.get("/admin/v1/nothing-here")).status
    response = await client.get("/admin/v1/nothing-here", headers=VIEWER)
    assert 404 == response.status
    assert (await problem(response))["type"].endswith(":not-found")


async def test_wrong_method_is_405_problem(client: AdminClient) -> None:
    """A known path with a method it does not serve answers 405 with Allow."""
    response = await client.delete("/admin/v1/dispatcher", headers=OPERATOR)
    assert 405 == response.status
    assert "GET" in response.headers["Allow"]
    await problem(response)


@pytest.fixture
async def unconfigured(platform: Platform, tmp_path: Path) -> AsyncIterator[AdminClient]:
    """An admin app whose configuration has no tokens at all."""
    raw = raw_config(platform.url, tmp_path, admin={"listen": "127.0.0.1:0"})
    async with open_gateway(parse_config(raw, ENVIRON)) as gateway:
        test_client = TestClient(TestServer(admin_app(gateway), host="127.0.0.1"))
        await test_client.start_server()
        try:
            yield test_client
        finally:
            await test_client.close()


@ROUTE
async def test_no_tokens_configured_refuses_everything_and_says_how_to_fix_it(
    unconfigured: AdminClient, route: tuple[str, str, str]
) -> None:
    """With no admin tokens configured every route is 401, explaining admin.tokens and the env."""
    method, path, _ = route
    response = await unconfigured.request(method, concrete(path), headers=OPERATOR)
    assert 401 == response.status
    detail = (await problem(response))["detail"]
    assert "admin.tokens" in detail
    assert "GATEWAY_ADMIN_TOKEN" in detail


def tokens(*entries: tuple[str, str, str]) -> AdminTokens:
    configs = []
    for name, role, value in entries:
        ref = SecretRef(env="T")
        assert ref.resolve({"T": value}) is None
        configs.append(AdminTokenConfig(name=name, role=role, token=ref))  # type: ignore[arg-type]
    return AdminTokens(configs)


def test_tokens_are_kept_as_digests_only() -> None:
    """The token ring holds SHA-256 digests, never the token text."""
    ring = tokens(("alice", "operator", "s3cret-value"))
    assert "s3cret-value" not in repr(vars(ring)) + repr(ring._known)


def test_authenticate_names_the_actor_and_role() -> None:
    """The matching token's name and role become the actor; the scheme is case-insensitive."""
    ring = tokens(("alice", "operator", "a" * 32), ("victor", "viewer", "b" * 32))
    actor = ring.authenticate("bearer " + "b" * 32)
    assert ("victor", "viewer") == (actor.name, actor.role)


def test_every_configured_token_is_compared(monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison does not stop at the first match: its cost does not reveal the position."""
    import gateway.ops.admin.auth as auth

    calls: list[bytes] = []
    real = auth.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(b)
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    ring = tokens(("a", "operator", "first"), ("b", "viewer", "second"), ("c", "viewer", "third"))
    ring.authenticate("Bearer first")
    assert 3 == len(calls)
