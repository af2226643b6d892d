"""The `/status` page: a self-contained page for people (inline CSS and SVG, no scripts, nothing
loaded from elsewhere, no secrets, no payloads) and the same facts as JSON for scripts. It owns
the last hour kept in memory and its background sampler (`history`), the incident line on-call
sets for everyone, kept in the audit log (`incident`), the facts shown, gathered from the
gateway parts it is handed (`facts`), the Jinja2 template and the charts (`render`), and the
handlers (the page, and `/status/feed.json` for other pages to embed) with their
`start()`/`stop()` lifecycle (`page`). It may import
`gateway.ops.metrics`, `gateway.outbox`, `gateway.resilience` and the shared root modules; it
is handed its parts by `gateway.app`, which it never imports.
"""

from __future__ import annotations

from gateway.ops.status.facts import CountedOutbox, DispatcherState, StatusFacts
from gateway.ops.status.history import Sample, StatusHistory, history_sampler
from gateway.ops.status.incident import IncidentBoard, incident_message
from gateway.ops.status.page import StatusPage
from gateway.ops.status.render import render

__all__ = [
    "CountedOutbox",
    "DispatcherState",
    "IncidentBoard",
    "Sample",
    "StatusFacts",
    "StatusHistory",
    "StatusPage",
    "history_sampler",
    "incident_message",
    "render",
]
