"""`/admin/v1/export` and `/admin/v1/import`: the outbox as JSON Lines, out and back in.

An export is every field of every matching submission (the body in base64), streamed as it is
read; importing it into an empty store gives back the same rows, field for field.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from gateway.errors import PayloadTooLarge, StoreError
from gateway.headers import REQUEST_ID
from gateway.ops.admin.middleware import current_actor, current_request_id
from gateway.ops.admin.params import query_filter
from gateway.outbox.oncall import OnCall

log = structlog.get_logger("gateway.ops.admin")

NDJSON = "application/x-ndjson"
#: Lines are sent in writes of about this size.
WRITE_BYTES = 64 * 1024
#: Largest import accepted (it is loaded in one transaction).
MAX_IMPORT_BYTES = 1024 * 1024 * 1024


class ExportInterrupted(ConnectionError):
    """The store failed mid-export: the connection is dropped so the client sees a cut-off
    chunked body, never a short file that looks complete."""


async def stream_lines(
    request: web.Request, lines: AsyncIterator[bytes], filename: str
) -> web.StreamResponse:
    """Send `lines` as a chunked `application/x-ndjson` download."""
    response = web.StreamResponse(
        headers={
            "Content-Type": NDJSON,
            "Content-Disposition": f'attachment; filename="{filename}"',
            REQUEST_ID: current_request_id(),
        }
    )
    response.enable_chunked_encoding()
    buffer = bytearray()
    try:
        async for line in lines:
            if not response.prepared:
                await response.prepare(request)
            buffer += line
            if len(buffer) >= WRITE_BYTES:
                await response.write(bytes(buffer))
                buffer.clear()
    except StoreError as exc:
        if not response.prepared:
            raise  # nothing sent yet: the middleware answers 503
        log.error("export interrupted by the store", error=str(exc), path=request.path)
        raise ExportInterrupted(str(exc)) from exc
    if not response.prepared:
        await response.prepare(request)
    if buffer:
        await response.write(bytes(buffer))
    await response.write_eof()
    return response


class TransferRoutes:
    def __init__(self, oncall: OnCall) -> None:
        self._oncall = oncall

    async def export(self, request: web.Request) -> web.StreamResponse:
        found = query_filter(request.query, allowed=())
        return await stream_lines(request, self._oncall.export(found.query), "submissions.jsonl")

    async def import_(self, request: web.Request) -> web.Response:
        """Load an export into an empty store (409 otherwise); all rows or none."""
        body = bytearray()
        async for chunk in request.content.iter_any():
            body += chunk
            if len(body) > MAX_IMPORT_BYTES:
                raise PayloadTooLarge(
                    f"an import may be at most {MAX_IMPORT_BYTES} bytes; split the export by "
                    "accepted_after / accepted_before"
                )
        imported = await self._oncall.import_lines(bytes(body).splitlines(), current_actor())
        return web.json_response({"imported": imported})
