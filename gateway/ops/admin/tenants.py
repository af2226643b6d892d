"""`/admin/v1/tenants…`: managed tenant API keys (docs/security-tenants.md).

The same changes as `invoice-gateway tenant`, by an operator's admin token (its name is the
audit log's actor). A new key is in the answer once and nowhere else; the store keeps its hash.
Every replica sharing the store picks changes up from it within seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from gateway.edge.tenants import KeyChangeRefused, KeyStore, issue_key, managed_keys, revoke_keys
from gateway.errors import BadRequest, NotFound
from gateway.ops.admin.middleware import current_actor
from gateway.ops.admin.params import InvalidParameter, json_body, text_field
from gateway.quantities import parse_duration


class TenantKeyRoutes:
    def __init__(
        self, store: KeyStore, tenants: list[str], wall: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        self._tenants = set(tenants)
        self._wall = wall

    async def list(self, request: web.Request) -> web.Response:
        """Every managed key of the configured tenants: ids, states and times, never keys."""
        tenant = request.query.get("tenant")
        for key in request.query:
            if key != "tenant":
                raise InvalidParameter(key, "unknown parameter; known: tenant")
        now = self._wall()
        keys = [
            k.to_json(now)
            for k in await managed_keys(self._store)
            if k.tenant in self._tenants and (tenant is None or k.tenant == tenant)
        ]
        return web.json_response({"keys": keys})

    async def issue(self, request: web.Request) -> web.Response:
        """A new key for the tenant (its first, or a rotation); the answer holds it once."""
        tenant = self._known(request.match_info["tenant"])
        body = await json_body(request, ("overlap", "expires"))
        actor = current_actor()
        issued = await issue_key(  # a rotation: never refused, the tenant's first key or not
            self._store,
            tenant,
            actor=actor.name,
            role=actor.role,
            now=self._wall(),
            rotate=True,
            overlap=_duration(body, "overlap"),
            expires=_duration(body, "expires"),
        )
        return web.json_response(issued.to_json(), status=201)

    async def revoke(self, request: web.Request) -> web.Response:
        """Revoke one managed key of the tenant."""
        tenant = self._known(request.match_info["tenant"])
        actor = current_actor()
        try:
            revoked = await revoke_keys(
                self._store,
                tenant,
                actor=actor.name,
                role=actor.role,
                now=self._wall(),
                key_id=request.match_info["key_id"],
            )
        except KeyChangeRefused as exc:
            raise NotFound(str(exc)) from None
        return web.json_response({"tenant": tenant, "revoked_key_ids": revoked})

    def _known(self, tenant: str) -> str:
        if tenant not in self._tenants:
            raise NotFound(f"tenant {tenant!r} is not in the configuration (tenants[])")
        return tenant


def _duration(body: dict[str, Any], name: str) -> float | None:
    text = text_field(body, name)
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise BadRequest(f"{name}: {exc}") from None
