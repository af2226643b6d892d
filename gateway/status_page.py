"""`/status`: a self-contained page for people (SPEC §5) — no external assets, no secrets,
no payloads. `/status?format=json` gives the same facts to scripts (and the demo)."""

from __future__ import annotations

import html
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway import __version__
from gateway.errors import StoreError
from gateway.submissions import SubmissionState

if TYPE_CHECKING:
    from gateway.app import Gateway

#: What each state means to someone reading the page.
_STATE_WORDS = {
    "queued": "waiting to be sent",
    "delivering": "being sent now",
    "delivered": "issued by the platform",
    "failed": "refused by the platform (final)",
    "unknown": "answer lost — being reconciled",
    "dead": "gave up — needs on-call",
    "discarded": "discarded by on-call",
}
_CIRCUIT_WORDS = {
    "closed": "closed — traffic flows",
    "open": "open — failing fast, submissions are queued",
    "half_open": "half-open — trying one call",
    "forced_open": "forced open by on-call",
    "forced_closed": "forced closed by on-call",
}


_CSS = """\
body{font:15px/1.4 system-ui,sans-serif;margin:2em;max-width:60em;color:#222}
h1{font-size:1.4em} .good{color:#17612b} .warn{color:#8a5a00} .bad{color:#a11}
table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{padding:.2em .8em;border-bottom:1px solid #ddd;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums} tr.dead td,tr.unknown td{font-weight:600}
small{color:#666}
"""


class StatusPage:
    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    async def facts(self) -> dict[str, Any]:
        gateway = self._gateway
        now = gateway.clock.wall()
        outbox: dict[str, Any]
        try:
            counts = await gateway.store.counts()
            oldest = counts.oldest_queued_at
            outbox = {
                "counts": {state.value: counts.by_state.get(state, 0) for state in SubmissionState},
                "oldest_queued_age_s": round(now - oldest, 1) if oldest is not None else None,
            }
        except StoreError as exc:
            outbox = {"error": str(exc)}
        return {
            "version": __version__,
            "now": _iso(now),
            "up_since": _iso(gateway.started_at),
            "platform": gateway.health.snapshot(),
            "circuits": gateway.breakers.snapshot(),
            "dispatcher": {
                "paused": gateway.dispatcher.paused,
                "in_flight": gateway.dispatcher.in_flight,
            },
            "outbox": outbox,
        }

    async def handle(self, request: web.Request) -> web.Response:
        facts = await self.facts()
        if request.query.get("format") == "json":
            return web.json_response(facts)
        return web.Response(text=render(facts), content_type="text/html", charset="utf-8")


def render(facts: dict[str, Any]) -> str:
    e = html.escape
    platform = facts["platform"]
    circuits = facts["circuits"]
    worst = next((c for c in circuits if c["state"] != "closed"), circuits[0] if circuits else None)
    circuit_state = str(worst["state"]) if worst else "closed"
    platform_status = str(platform["status"])
    if circuit_state in ("open", "forced_open") or platform_status == "down":
        headline, tone = "Platform down — submissions are being queued", "bad"
    elif circuit_state == "half_open":
        headline, tone = "Platform recovering", "warn"
    else:
        headline, tone = "Platform up", "good"
    outbox = facts["outbox"]
    rows = ""
    if "counts" in outbox:
        for state, count in outbox["counts"].items():
            rows += (
                f"<tr class='{e(state)}'><td>{e(state)}</td><td class='n'>{count}</td>"
                f"<td>{e(_STATE_WORDS.get(state, ''))}</td></tr>"
            )
        age = outbox["oldest_queued_age_s"]
        oldest = f"oldest queued: {_duration(age)}" if age is not None else "nothing queued"
    else:
        rows = f"<tr><td colspan=3>store unavailable: {e(outbox['error'])}</td></tr>"
        oldest = ""
    circuit_rows = "".join(
        f"<tr><td>{e(str(c['name']))}</td>"
        f"<td>{e(_CIRCUIT_WORDS.get(str(c['state']), str(c['state'])))}</td>"
        f"<td>since {e(str(c['since']))}</td><td>{e(str(c['reason'] or ''))}</td></tr>"
        for c in circuits
    )
    paused = " (paused by on-call)" if facts["dispatcher"]["paused"] else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="5">
<title>invoice-gateway status</title>
<style>
{_CSS}
</style></head><body>
<h1 class="{tone}">{e(headline)}</h1>
<p>Platform health (probe): <b>{e(platform_status)}</b> since {e(str(platform["since"]))}.
Gateway {e(facts["version"])} up since {e(facts["up_since"])}.</p>
<h2>Circuit</h2><table>{circuit_rows}</table>
<h2>Outbox</h2>
<p>Dispatcher: {facts["dispatcher"]["in_flight"]} in flight{e(paused)}. {e(oldest)}.</p>
<table><tr><th>state</th><th>submissions</th><th>meaning</th></tr>{rows}</table>
<small>Refreshes every 5 s · {e(facts["now"])} ·
JSON: <a href="?format=json">?format=json</a></small>
</body></html>
"""


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _iso(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall))
