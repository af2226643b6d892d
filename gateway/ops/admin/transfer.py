"""`/admin/v1/export` and `/admin/v1/import`: the outbox as JSON Lines, out and back in.

An export is masked by default: each submission as a viewer sees it (`views.export_view`).
With `unmasked=1` and a `reason` (audited as `export-unmasked`) it is every field of every
matching submission (the body in base64), streamed as it is read; importing that into an empty
store gives back the same rows, field for field. A masked export cannot be imported.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import structlog
from aiohttp import web

from gateway.errors import PayloadTooLarge, StoreError
from gateway.headers import REQUEST_ID
from gateway.ops.admin.middleware import current_actor, current_request_id
from gateway.ops.admin.params import InvalidParameter, query_filter
from gateway.ops.admin.views import export_view
from gateway.outbox.oncall import OnCall
from gateway.outbox.submissions import Submission

log = structlog.get_logger("gateway.ops.admin")

NDJSON = "application/x-ndjson"
#: Lines are sent in writes of about this size.
WRITE_BYTES = 64 * 1024
#: Largest import accepted (it is loaded in one transaction).
MAX_IMPORT_BYTES = 1024 * 1024 * 1024


#: Export parameters besides the filter.
EXPORT_KEYS = ("unmasked", "reason")
_FLAGS = {"1": True, "true": True, "0": False, "false": False}


def _unmasked(request: web.Request) -> bool:
    values = request.query.getall("unmasked", [])
    if not values:
        return False
    if len(values) != 1 or values[0].strip().lower() not in _FLAGS:
        raise InvalidParameter("unmasked", "give it once, as 1 or 0 (true or false)")
    return _FLAGS[values[0].strip().lower()]


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
        found = query_filter(request.query, allowed=EXPORT_KEYS)
        view: Callable[[Submission], dict[str, Any]] = export_view
        if _unmasked(request):
            reason = request.query.get("reason", "").strip()
            if not reason:
                raise InvalidParameter(
                    "reason",
                    "is required with unmasked=1: say why the export needs personal data whole "
                    "(it is recorded in the audit log)",
                )
            await self._oncall.record(current_actor(), "export-unmasked", reason, filter=found.echo)
            view = Submission.to_record
        lines = self._oncall.export(found.query, view=view)
        return await stream_lines(request, lines, "submissions.jsonl")

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
