"""The one middleware every admin route runs behind: authenticate, authorize, answer errors
as problem+json, log the request. Routes cannot opt out, so none can forget to check."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from typing import Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway.edge.problem import client_error, problem_response, store_unavailable
from gateway.errors import ClientRequestError, StoreError
from gateway.headers import REQUEST_ID, request_id
from gateway.ops.admin.auth import AdminTokens, AdminUnauthenticated, Role, authorize
from gateway.ops.admin.params import InvalidParameter
from gateway.outbox.oncall import Actor

access_log = structlog.get_logger("gateway.ops.admin")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: The role each registered route needs (unmatched paths need only a valid token).
ROUTE_ROLES = web.AppKey("admin_route_roles", dict[web.AbstractRoute, Role])
# Set by the middleware for the request it is handling (each request runs in its own context;
# aiohttp's typed request storage needs a newer aiohttp than the one this package supports).
_actor: ContextVar[Actor] = ContextVar("admin_actor")
_request_id: ContextVar[str] = ContextVar("admin_request_id")


def current_actor() -> Actor:
    """Who sent the request being handled (authenticated before any handler runs)."""
    return _actor.get()


def current_request_id() -> str:
    return _request_id.get()


def reveals() -> bool:
    """Whether the caller may see payloads unmasked (operators only)."""
    return current_actor().role == Role.OPERATOR.value


#: Paths served without a token: Prometheus scrapes `/metrics` on this localhost-only listener.
PUBLIC_PATHS = frozenset({"/metrics"})


def guard(tokens: AdminTokens) -> Middleware:
    @web.middleware
    async def admin_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PUBLIC_PATHS and request.method == "GET":
            return await handler(request)
        started = time.perf_counter()
        rid = request_id(request.headers)
        _request_id.set(rid)
        actor: Actor | None = None
        try:
            actor = tokens.authenticate(request.headers.get("Authorization"))
            _actor.set(actor)
            needed = request.app[ROUTE_ROLES].get(request.match_info.route, Role.VIEWER)
            authorize(actor, needed, f"{request.method} {request.path}")
            response = await handler(request)
        except AdminUnauthenticated as exc:
            response = _problem(exc, rid, headers={"WWW-Authenticate": exc.challenge})
        except InvalidParameter as exc:
            response = _problem(exc, rid, extra={"parameter": exc.parameter})
        except ClientRequestError as exc:
            response = _problem(exc, rid)
        except StoreError as exc:
            response = store_unavailable(
                exc,
                rid,
                title="Cannot use the store",
                consequence="nothing was changed. Retry later",
            )
        except web.HTTPException as exc:
            response = _http_problem(exc, rid, request)
        if not response.prepared:
            response.headers[REQUEST_ID] = rid
        access_log.info(
            "admin request",
            request_id=rid,
            actor=actor.name if actor else None,
            role=actor.role if actor else None,
            method=request.method,
            path=request.path,
            status=response.status,
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
        )
        return response

    return admin_guard


def _problem(
    exc: ClientRequestError,
    rid: str,
    *,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> web.Response:
    return client_error(exc, rid, headers=headers, extra=extra)


def _http_problem(exc: web.HTTPException, rid: str, request: web.Request) -> web.Response:
    """aiohttp's own refusals (no such route, wrong method, body too large) as problem+json."""
    slugs = {404: "not-found", 405: "method-not-allowed", 413: "payload-too-large"}
    details = {
        404: f"no admin route {request.path}; GET /admin/v1/openapi.json lists them",
        405: f"{request.method} is not allowed on {request.path}",
    }
    headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    return problem_response(
        status=exc.status,
        slug=slugs.get(exc.status, "bad-request"),
        title=exc.reason,
        detail=details.get(exc.status, exc.text or exc.reason),
        request_id=rid,
        headers=headers,
    )
