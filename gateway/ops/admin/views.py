"""How submissions and audit entries look in admin answers, masked for viewers."""

from __future__ import annotations

import base64
import json
from typing import Any

from gateway.ops.admin.masking import mask_edit, visible_headers
from gateway.outbox.submissions import AuditEntry, Submission
from gateway.sensitive import mask


def summary(submission: Submission, *, reveal: bool) -> dict[str, Any]:
    """The tenant's public view plus what on-call needs to tell submissions apart."""
    view = submission.public_view()
    view["tenant"] = submission.tenant
    view["idempotency_key"] = submission.idempotency_key
    view["maybe_sent"] = submission.maybe_sent
    return view if reveal else dict(mask(view))


def detail(submission: Submission, *, reveal: bool) -> dict[str, Any]:
    """The summary plus the payload, request headers, result and the platform's answer."""
    view = summary(submission, reveal=True)
    payload, is_json = _document(submission.body)
    view["payload"] = payload
    if not is_json:
        view["payload_b64"] = base64.b64encode(submission.body).decode()
    view["headers"] = visible_headers(submission.headers)
    view["result"] = submission.result
    response = submission.response
    view["response"] = (
        None
        if response is None
        else {
            "status": response.status,
            "headers": visible_headers(response.headers),
            "body": _document(response.body)[0],
        }
    )
    if reveal:
        return view
    masked = dict(mask(view))
    if not is_json:  # text cannot be masked field by field: operators only
        masked.pop("payload_b64", None)
        masked["payload"] = f"({len(submission.body)} bytes, not JSON: shown to operators only)"
    return masked


def export_view(submission: Submission) -> dict[str, Any]:
    """A line of a masked export: the submission as a viewer sees it, marked `masked` (an import
    refuses it: it is not a backup)."""
    view = detail(submission, reveal=False)
    view["masked"] = True
    return view


def audit_entry(entry: AuditEntry, *, reveal: bool) -> dict[str, Any]:
    view = entry.to_json()
    if not reveal:
        view["details"] = mask_edit(view["details"])
    return view


def _document(body: bytes) -> tuple[Any, bool]:
    """The body as JSON when it is JSON, else as text; and whether it was JSON."""
    try:
        return json.loads(body), True
    except (UnicodeDecodeError, json.JSONDecodeError):
        return body.decode("utf-8", "replace"), False
