"""`/admin/v1/token…`: the platform access token, and an operator's order to renew it.

The platform allows about 50 token calls per 30 days, so after it refuses the gateway's
credentials or says the token quota is used up, the gateway asks for no token until someone
says so (docs/design.md#token). `POST /token/refresh` is that someone: it is written to the
audit log, with the operator's reason, before the token call is made.
"""

from __future__ import annotations

from aiohttp import web

from gateway.edge.problem import problem_response
from gateway.errors import ActionNotAllowed, BadRequest, TokenUnavailable
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
        return web.json_response(status.to_json())

    async def refresh(self, request: web.Request) -> web.Response:
        """Ask the platform for a new token now, ending a configuration-error or quota hold."""
        reason = text_field(await json_body(request, ("reason",)), "reason")
        if not reason or not reason.strip():
            raise BadRequest(
                "a reason is required for a token refresh (it spends the platform's token "
                "quota); say why, for the audit log"
            )
        before = self._auth.token_status()
        if before is None:
            raise ActionNotAllowed("the upstream's auth scheme (upstream.auth.scheme) has no token")
        await self._oncall.record(
            current_actor(),
            "token-refresh",
            reason,
            hold=before.hold.to_json() if before.hold is not None else None,
            calls_last_30_days=before.calls_last_30_days,
        )
        try:
            after = await self._auth.refresh_token()
        except TokenUnavailable as exc:
            now = self._auth.token_status()
            return problem_response(
                status=503,
                slug="token-unavailable",
                title="No new access token",
                detail=f"{exc}. Nothing else was changed",
                request_id=current_request_id(),
                extra={"cause": exc.cause, "token": now.to_json() if now is not None else None},
            )
        return web.json_response(after.to_json())
