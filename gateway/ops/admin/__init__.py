"""The admin API (docs/admin-api.md): on-call operations over HTTP, on a listener of
its own, behind bearer tokens with roles.

    routes      the route table and `admin_app`
    middleware  authenticate → authorize → handler → problem+json, for every route
    auth        tokens (SHA-256 digests, constant-time compare) and roles
    params      filters, pages and JSON bodies, with a 400 naming what is wrong
    masking     personal data hidden from viewers
    views       how submissions and audit entries are rendered
    submissions · jobs · control · token · transfer · audit   the handlers, by what they serve
"""

from gateway.ops.admin.auth import AdminTokens, Role
from gateway.ops.admin.routes import PREFIX, admin_app, openapi_document
from gateway.sensitive import mask

__all__ = ["PREFIX", "AdminTokens", "Role", "admin_app", "mask", "openapi_document"]
