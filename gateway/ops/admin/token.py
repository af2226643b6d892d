"""`/admin/v1/token…`: the platform access token, and an operator's order to renew it.

The platform allows about 50 token calls per 30 days, so after it refuses the gateway's
credentials or says the token quota is used up, the gateway asks for no token until someone
says so (docs/design.md#token). `POST /token/refresh` is that someone: it is written to the
audit log, with the operator's reason, before the token call is made. Tenants with a platform
identity of their own (merchants of a service-provider application) have tokens of their own:
`GET /token` lists them under `tenants`, and `{"tenant": id}` refreshes one of them.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.edge.problem import problem_response
from gateway.errors import ActionNotAllowed, BadRequest, NotFound, TokenUnavailable
from gateway.ops.admin.middleware import current_actor, current_request_id
from gateway.ops.admin.params import json_body, text_field
from gateway.outbox.oncall import OnCall
from gateway.upstream.auth import UpstreamAuth


class TokenRoutes:
    def __init__(self, oncall: OnCall, auth: UpstreamAuth) -> None:
        self._oncall = oncall
        self._auth = auth

    async def show(self, _request: web.Request) -> web.Response:
        """The token (when obtained and until when, never its value), the token calls, and what
        holds the next one back."""
        status = self._auth.token_status()
        if status is None:
            raise ActionNotAllowed("the upstream's auth scheme (upstream.auth.scheme) has no token")
        return web.json_response(self._with_tenants(status.to_json()))

    def _with_tenants(self, shown: dict[str, Any]) -> dict[str, Any]:
        tenants = self._auth.tenant_tokens()
        shown["tenants"] = {tenant: status.to_json() for tenant, status in tenants.items()}
        return shown

    async def refresh(self, request: web.Request) -> web.Response:
        """Ask the platform for a new token now, ending a configuration-error or quota hold."""
        body = await json_body(request, ("reason", "tenant"))
        reason, tenant = text_field(body, "reason"), text_field(body, "tenant")
        if not reason or not reason.strip():
            raise BadRequest(
                "a reason is required for a token refresh (it spends the platform's token "
                "quota); say why, for the audit log"
            )
        before = self._auth.token_status()
        if before is None:
            raise ActionNotAllowed("the upstream's auth scheme (upstream.auth.scheme) has no token")
        if tenant is not None:
            found = self._auth.tenant_tokens().get(tenant)
            if found is None:
                raise NotFound(
                    f"tenant {tenant!r} has no platform identity of its own "
                    "(tenants[].upstream); without --tenant the gateway's own token is refreshed"
                )
            before = found
        details: dict[str, Any] = {"tenant": tenant} if tenant is not None else {}
        await self._oncall.record(
            current_actor(),
            "token-refresh",
            reason,
            hold=before.hold.to_json() if before.hold is not None else None,
            calls_last_30_days=before.calls_last_30_days,
            **details,
        )
        try:
            after = await self._auth.refresh_token(tenant)
        except TokenUnavailable as exc:
            now = (
                self._auth.token_status()
                if tenant is None
                else self._auth.tenant_tokens().get(tenant)
            )
            return problem_response(
                status=503,
                slug="token-unavailable",
                title="No new access token",
                detail=f"{exc}. Nothing else was changed",
                request_id=current_request_id(),
                extra={"cause": exc.cause, "token": now.to_json() if now is not None else None},
            )
        if tenant is not None:
            return web.json_response({"tenant": tenant, **after.to_json()})
        return web.json_response(self._with_tenants(after.to_json()))
