"""`/admin/v1/audit…`: who did what, when, to which submissions, and why."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from aiohttp import web

from gateway.ops.admin.middleware import reveals
from gateway.ops.admin.params import InvalidParameter, page
from gateway.ops.admin.transfer import stream_lines
from gateway.ops.admin.views import audit_entry
from gateway.outbox.store import OutboxStore

#: Entries read per store call while exporting.
EXPORT_PAGE = 500


class AuditRoutes:
    def __init__(self, store: OutboxStore) -> None:
        self._store = store

    async def list(self, request: web.Request) -> web.Response:
        """Newest first, a page at a time."""
        for key in request.query:
            if key not in ("limit", "cursor"):
                raise InvalidParameter(key, "unknown parameter; known: limit, cursor")
        limit, cursor = page(request.query)
        try:
            entries, next_cursor = await self._store.audit_log(limit=limit, cursor=cursor)
        except ValueError as exc:  # a cursor this API never handed out
            raise InvalidParameter("cursor", str(exc)) from None
        reveal = reveals()
        return web.json_response(
            {"items": [audit_entry(e, reveal=reveal) for e in entries], "next_cursor": next_cursor}
        )

    async def export(self, request: web.Request) -> web.StreamResponse:
        """The whole log as JSON Lines, newest first."""
        for key in request.query:
            raise InvalidParameter(key, "unknown parameter; the audit export takes none")
        return await stream_lines(request, self._lines(reveals()), "audit.jsonl")

    async def _lines(self, reveal: bool) -> AsyncIterator[bytes]:
        cursor: str | None = None
        while True:
            entries, cursor = await self._store.audit_log(limit=EXPORT_PAGE, cursor=cursor)
            for entry in entries:
                line = json.dumps(audit_entry(entry, reveal=reveal), ensure_ascii=False)
                yield line.encode() + b"\n"
            if cursor is None:
                return
