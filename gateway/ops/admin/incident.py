"""`/admin/v1/status/incident`: the line on-call puts at the top of `/status` for everyone.

Setting or clearing it is an audit entry (`status.incident.set` with the message, or
`status.incident.clear`); the status page of every replica on the store reads the latest one
(`gateway.ops.status.incident`). This replica shows the change at once, the others within a
few seconds.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.ops.admin.middleware import current_actor
from gateway.ops.admin.params import InvalidParameter, json_body, text_field
from gateway.ops.status import IncidentBoard, incident_message
from gateway.ops.status.incident import CLEAR, SET
from gateway.outbox.store import OutboxStore
from gateway.outbox.submissions import AuditEntry


class IncidentRoutes:
    def __init__(self, store: OutboxStore, board: IncidentBoard) -> None:
        self._store = store
        self._board = board

    async def set(self, request: web.Request) -> web.Response:
        """Show `message` on `/status` from now on (replacing any line shown)."""
        body = await json_body(request, ("message", "reason"))
        if "message" not in body:
            raise InvalidParameter("message", "is required: the line to show on /status")
        try:
            message = incident_message(body["message"])
        except ValueError as exc:
            raise InvalidParameter("message", str(exc)) from None
        await self._record(SET, text_field(body, "reason"), {"message": message})
        return self._view()

    async def clear(self, request: web.Request) -> web.Response:
        """Show no line; clearing when none is shown records nothing."""
        for key in request.query:
            if key != "reason":
                raise InvalidParameter(key, "unknown parameter; known: reason")
        await self._board.refresh()
        if self._board.current() is not None:
            await self._record(CLEAR, request.query.get("reason"), {})
        return self._view()

    async def _record(self, action: str, reason: str | None, details: dict[str, Any]) -> None:
        actor = current_actor()
        entry = AuditEntry(
            actor=actor.name, role=actor.role, action=action, reason=reason, details=details
        )
        self._board.apply(await self._store.record_audit(entry))

    def _view(self) -> web.Response:
        return web.json_response({"incident": self._board.current()})
