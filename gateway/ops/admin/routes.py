"""The admin application: every route, the role it needs, and who serves it.

`_routes` is the whole API; `gateway/ops/admin/openapi.json` describes the same set (a test checks
both directions), and docs/admin-api.md says what each does.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Protocol

import structlog
from aiohttp import web

from gateway.clock import Clock
from gateway.config import GatewayConfig
from gateway.ops.admin.audit import AuditRoutes
from gateway.ops.admin.auth import AdminTokens, Role
from gateway.ops.admin.callbacks import CallbackRoutes
from gateway.ops.admin.control import ControlRoutes
from gateway.ops.admin.incident import IncidentRoutes
from gateway.ops.admin.jobs import JobRoutes
from gateway.ops.admin.middleware import ROUTE_ROLES, Handler, guard
from gateway.ops.admin.submissions import SubmissionRoutes
from gateway.ops.admin.tenants import TenantKeyRoutes
from gateway.ops.admin.token import TokenRoutes
from gateway.ops.admin.transfer import TransferRoutes
from gateway.ops.metrics import Metrics, metrics_handler
from gateway.ops.status import StatusPage
from gateway.outbox.dispatcher import Dispatcher
from gateway.outbox.oncall import OnCall
from gateway.outbox.store import Store
from gateway.resilience.breaker import BreakerRegistry
from gateway.resilience.probe import UpstreamHealth
from gateway.upstream.auth import UpstreamAuth


class Administered(Protocol):
    """The running gateway's parts the admin API acts on (`gateway.app.Gateway` is one)."""

    @property
    def config(self) -> GatewayConfig: ...
    @property
    def store(self) -> Store: ...
    @property
    def oncall(self) -> OnCall: ...
    @property
    def dispatcher(self) -> Dispatcher: ...
    @property
    def breakers(self) -> BreakerRegistry: ...
    @property
    def health(self) -> UpstreamHealth: ...
    @property
    def metrics(self) -> Metrics: ...
    @property
    def auth(self) -> UpstreamAuth: ...
    @property
    def status_page(self) -> StatusPage: ...
    @property
    def clock(self) -> Clock: ...


log = structlog.get_logger("gateway.ops.admin")

PREFIX = "/admin/v1"
#: Request bodies other than imports (which are streamed) are small JSON objects.
MAX_JSON_BODY = 1024 * 1024


@dataclass(frozen=True, slots=True)
class AdminRoute:
    method: str
    path: str
    role: Role
    handler: Handler


def openapi_document() -> bytes:
    """The OpenAPI 3 document of this API, as kept in the package."""
    return resources.files("gateway.ops.admin").joinpath("openapi.json").read_bytes()


def admin_app(gateway: Administered) -> web.Application:
    """The admin listener's application: `/admin/v1/…` behind bearer tokens with roles."""
    tokens = AdminTokens(gateway.config.admin.tokens)
    if not tokens:
        log.warning(
            "the admin API has no tokens configured and refuses every request; set "
            "admin.tokens or GATEWAY_ADMIN_TOKEN"
        )
    document = openapi_document()

    async def openapi(_request: web.Request) -> web.Response:
        return web.Response(body=document, content_type="application/json")

    app = web.Application(middlewares=[guard(tokens)], client_max_size=MAX_JSON_BODY)
    roles: dict[web.AbstractRoute, Role] = {}
    for route in _routes(gateway, openapi):
        roles[app.router.add_route(route.method, PREFIX + route.path, route.handler)] = route.role
    app[ROUTE_ROLES] = roles
    app.router.add_get("/metrics", metrics_handler(gateway.metrics.registry))
    return app


def _routes(gateway: Administered, openapi: Handler) -> list[AdminRoute]:
    submissions = SubmissionRoutes(gateway.oncall, gateway.store)
    jobs = JobRoutes(gateway.oncall)
    control = ControlRoutes(gateway.oncall, gateway.dispatcher, gateway.breakers, gateway.health)
    transfer = TransferRoutes(gateway.oncall)
    audit = AuditRoutes(gateway.store)
    callbacks = CallbackRoutes(gateway.store.callbacks, gateway.oncall, gateway.clock.wall)
    incident = IncidentRoutes(gateway.store, gateway.status_page.incidents)
    token = TokenRoutes(gateway.oncall, gateway.auth)
    tenant_keys = TenantKeyRoutes(gateway.store, [t.id for t in gateway.config.tenants])
    v, o = Role.VIEWER, Role.OPERATOR
    return [
        AdminRoute("GET", "/submissions", v, submissions.list),
        AdminRoute("GET", "/submissions/count", v, submissions.count),
        AdminRoute("GET", "/submissions/{id}", v, submissions.show),
        # The buyers' personal data whole, for issuing by hand: not for viewers.
        AdminRoute("POST", "/submissions/export-manual", o, submissions.export_manual),
        AdminRoute("POST", "/submissions/{id}/replay", o, submissions.replay),
        AdminRoute("POST", "/submissions/{id}/requeue", o, submissions.requeue),
        AdminRoute("POST", "/submissions/{id}/discard", o, submissions.discard),
        AdminRoute("POST", "/submissions/{id}/force-resend", o, submissions.force_resend),
        AdminRoute("PATCH", "/submissions/{id}/payload", o, submissions.edit_payload),
        AdminRoute("POST", "/submissions/{id}/mark-issued", o, submissions.mark_issued),
        AdminRoute("POST", "/replays", o, jobs.replay),
        AdminRoute("GET", "/jobs/{id}", v, jobs.show),
        AdminRoute("POST", "/jobs/{id}/cancel", o, jobs.cancel),
        AdminRoute("GET", "/dispatcher", v, control.dispatcher),
        AdminRoute("POST", "/dispatcher/pause", o, control.pause),
        AdminRoute("POST", "/dispatcher/resume", o, control.resume),
        AdminRoute("GET", "/circuit", v, control.circuit),
        AdminRoute("POST", "/circuit/open", o, control.open),
        AdminRoute("POST", "/circuit/close", o, control.close),
        AdminRoute("POST", "/circuit/reset", o, control.reset),
        AdminRoute("PUT", "/status/incident", o, incident.set),
        AdminRoute("DELETE", "/status/incident", o, incident.clear),
        AdminRoute("GET", "/token", v, token.show),
        AdminRoute("POST", "/token/refresh", o, token.refresh),
        AdminRoute("GET", "/tenants/keys", v, tenant_keys.list),
        AdminRoute("POST", "/tenants/{tenant}/keys", o, tenant_keys.issue),
        AdminRoute("POST", "/tenants/{tenant}/keys/{key_id}/revoke", o, tenant_keys.revoke),
        # A backup holds every payload whole, so it is not for viewers (they see them masked).
        AdminRoute("GET", "/export", o, transfer.export),
        AdminRoute("POST", "/import", o, transfer.import_),
        AdminRoute("GET", "/callbacks", v, callbacks.list),
        AdminRoute("POST", "/callbacks/{id}/replay", o, callbacks.replay),
        AdminRoute("GET", "/audit", v, audit.list),
        AdminRoute("GET", "/audit/export", v, audit.export),
        AdminRoute("GET", "/openapi.json", v, openapi),
    ]
