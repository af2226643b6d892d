"""`/admin/v1/submissions…`: find submissions, look at one, act on one."""

from __future__ import annotations

from dataclasses import replace

from aiohttp import web

from gateway.ops.admin.middleware import current_actor, reveals
from gateway.ops.admin.params import (
    InvalidParameter,
    body_filter,
    json_body,
    page,
    query_filter,
    text_field,
)
from gateway.ops.admin.views import detail, summary
from gateway.outbox.oncall import MANUAL_EXPORT_DEFAULT, OnCall
from gateway.outbox.store import OutboxStore
from gateway.outbox.submissions import Submission


class SubmissionRoutes:
    def __init__(self, oncall: OnCall, store: OutboxStore) -> None:
        self._oncall = oncall
        self._store = store

    async def list(self, request: web.Request) -> web.Response:
        """Newest first, a page at a time."""
        found = query_filter(request.query)
        limit, cursor = page(request.query)
        try:
            result = await self._store.query(found.query, limit=limit, cursor=cursor)
        except ValueError as exc:  # a cursor this API never handed out
            raise InvalidParameter("cursor", str(exc)) from None
        reveal = reveals()
        return web.json_response(
            {
                "items": [summary(s, reveal=reveal) for s in result.items],
                "next_cursor": result.next_cursor,
            }
        )

    async def count(self, request: web.Request) -> web.Response:
        found = query_filter(request.query, allowed=())
        return web.json_response({"count": await self._oncall.count(found.query)})

    async def show(self, request: web.Request) -> web.Response:
        submission = await self._oncall.get(request.match_info["id"])
        return web.json_response(detail(submission, reveal=reveals()))

    async def replay(self, request: web.Request) -> web.Response:
        body = await json_body(request, ("reason",))
        updated = await self._oncall.replay(
            request.match_info["id"], current_actor(), text_field(body, "reason")
        )
        return _updated(updated)

    async def requeue(self, request: web.Request) -> web.Response:
        body = await json_body(request, ("reason",))
        updated = await self._oncall.requeue(
            request.match_info["id"], current_actor(), text_field(body, "reason")
        )
        return _updated(updated)

    async def discard(self, request: web.Request) -> web.Response:
        body = await json_body(request, ("reason",))
        updated = await self._oncall.discard(
            request.match_info["id"], current_actor(), text_field(body, "reason")
        )
        return _updated(updated)

    async def force_resend(self, request: web.Request) -> web.Response:
        body = await json_body(request, ("reason", "confirm"))
        confirm = body.get("confirm", False)
        if not isinstance(confirm, bool):
            raise InvalidParameter("confirm", f"must be true or false, got {confirm!r}")
        updated = await self._oncall.force_resend(
            request.match_info["id"],
            current_actor(),
            text_field(body, "reason"),
            confirm=confirm,
        )
        return _updated(updated)

    async def edit_payload(self, request: web.Request) -> web.Response:
        body = await json_body(request, ("pointer", "value", "reason"))
        pointer = text_field(body, "pointer")
        if pointer is None:
            raise InvalidParameter("pointer", "is required, e.g. /order/buyerTaxNum")
        if "value" not in body:
            raise InvalidParameter("value", "is required (the field's new value; may be null)")
        updated = await self._oncall.edit_payload(
            request.match_info["id"],
            current_actor(),
            pointer,
            body["value"],
            text_field(body, "reason"),
        )
        return _updated(updated)

    async def mark_issued(self, request: web.Request) -> web.Response:
        """Record that the invoice was issued by hand in the tax bureau's portal."""
        body = await json_body(request, ("invoice_number", "reason"))
        updated = await self._oncall.mark_issued(
            request.match_info["id"],
            current_actor(),
            text_field(body, "invoice_number"),
            text_field(body, "reason"),
        )
        return _updated(updated)

    async def export_manual(self, request: web.Request) -> web.Response:
        """What is stuck, one row per invoice line for the tax bureau portal's batch import,
        personal data whole (operators only; a reason is required and the export is audited)."""
        body = await json_body(request, ("filter", "reason"))
        found = body_filter(body.get("filter"))
        # Without a state: what is stuck and surely unsent (unknown ones only when asked for).
        states = found.query.states or MANUAL_EXPORT_DEFAULT
        echo = {**found.echo, "state": [s.value for s in states]}
        export = await self._oncall.export_manual(
            replace(found.query, states=states), echo, current_actor(), text_field(body, "reason")
        )
        return web.json_response({**export.to_json(), "filter": echo})


def _updated(submission: Submission) -> web.Response:
    # Only operators act, so the answer is never masked.
    return web.json_response(summary(submission, reveal=True))
