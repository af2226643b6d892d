"""`/status`: a self-contained page for people — no external assets, no scripts, no
secrets, no payloads. `/status?format=json` gives the same facts to scripts (and the demo).

    StatusHistory   the last hour in memory: a `Sample` every 10 s (client outcomes, failed
                    platform calls by class, submissions waiting) and when the platform was down
    StatusPage      samples into the history in the background; `facts()` is what the page
                    shows, as JSON-ready data; `handle()` answers with HTML or JSON
    render()        facts → HTML with inline CSS and inline SVG charts; refreshes itself
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import html
import math
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web
from prometheus_client import Counter

from gateway import __version__
from gateway.clock import Clock
from gateway.errors import StoreError
from gateway.outbox.submissions import SubmissionState
from gateway.resilience.breaker import CircuitState

if TYPE_CHECKING:
    from gateway.app import Gateway

log = structlog.get_logger("gateway.status")

#: How often the history is sampled, and how much of it the page shows.
SAMPLE_SECONDS = 10.0
WINDOW_SECONDS = 3600.0
REFRESH_SECONDS = 10
#: Client outcomes (the `X-Gateway-Outcome` values), bottom to top in the chart.
OUTCOMES = ("forwarded", "replayed", "queued", "rejected")
#: States of submissions the platform does not have yet, as far as the gateway knows.
WAITING = (SubmissionState.QUEUED, SubmissionState.DELIVERING, SubmissionState.UNKNOWN)
_TROUBLED = frozenset({CircuitState.OPEN, CircuitState.HALF_OPEN, CircuitState.FORCED_OPEN})

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
#: Failure classes (`gateway.resilience.failures.FailureClass`) as a person would say them.
_FAILURE_WORDS = {
    "refused": "platform refused connections",
    "connect_timeout": "platform did not accept connections in time",
    "token_unavailable": "could not get an access token from the platform",
    "timeout": "answer lost in transit (no answer in time)",
    "connection_lost": "answer lost in transit (connection dropped)",
    "truncated": "answer lost in transit (cut off)",
    "unparsable": "platform's answer unreadable",
    "http_5xx": "platform server error",
    "http_429": "platform rate-limiting the gateway",
    "busy": "platform busy",
    "quota": "daily quota used up",
    "auth": "platform rejected the gateway's credentials",
    "clock_skew": "platform refused the gateway's clock (check NTP on the gateway host)",
    "http_4xx": "platform rejected the request",
    "permanent": "invoice data refused by the platform",
    "duplicate": "order number already used on the platform",
    "circuit_open": "not sent: circuit open",
}
_OUTCOME_COLOURS = {
    "forwarded": "#2e7d32",
    "replayed": "#1e6fbf",
    "queued": "#e09b00",
    "rejected": "#c62828",
}


@dataclass(frozen=True, slots=True)
class Sample:
    """The gateway's counters at one moment; the history charts the differences."""

    at: float
    #: Client requests since start, by outcome.
    outcomes: Mapping[str, float] = field(default_factory=dict)
    #: Failed calls to the platform since start, by failure class.
    failures: Mapping[str, float] = field(default_factory=dict)
    #: Submissions the platform does not have yet; None when the store could not be read.
    waiting: int | None = None


@dataclass(slots=True)
class Outage:
    """When the platform went down, and came back (None while it is down)."""

    start: float
    end: float | None = None


class StatusHistory:
    """The last `window` seconds in memory: samples in a ring buffer, and the times the
    platform was down (from the circuit breakers' transitions)."""

    def __init__(
        self, clock: Clock, *, interval: float = SAMPLE_SECONDS, window: float = WINDOW_SECONDS
    ) -> None:
        self.interval = interval
        self.window = window
        self._clock = clock
        self._samples: deque[Sample] = deque(maxlen=math.ceil(window / interval) + 2)
        self._troubled: set[str] = set()
        self._outages: deque[Outage] = deque()
        self.down_since: float | None = None
        self.up_since: float | None = None

    def add(self, sample: Sample) -> None:
        self._samples.append(sample)
        horizon = sample.at - self.window
        while self._outages and (end := self._outages[0].end) is not None and end < horizon:
            self._outages.popleft()

    def transition(self, breaker: str, _old: CircuitState, new: CircuitState, _reason: str) -> None:
        """A `TransitionListener`: the platform is down from the first breaker leaving `closed`
        for open (half-open trials included) until every breaker is closed again."""
        if new in _TROUBLED:
            self._troubled.add(breaker)
        else:
            self._troubled.discard(breaker)
        now = self._clock.wall()
        if self._troubled and self.down_since is None:
            self.down_since = now
            self._outages.append(Outage(now))
        elif not self._troubled and self.down_since is not None:
            self.down_since = None
            self.up_since = now
            if self._outages:
                self._outages[-1].end = now

    def minutes(self, latest: Sample) -> list[dict[str, Any]]:
        """Client outcomes per minute over the window, oldest first, ending at `latest`."""
        slots = math.ceil(self.window / 60)
        buckets = [dict.fromkeys(OUTCOMES, 0) for _ in range(slots)]
        previous: Mapping[str, float] = {}
        for sample in [*self._samples, latest]:
            slot = int((latest.at - sample.at) // 60)
            if 0 <= slot < slots:
                for outcome in OUTCOMES:
                    delta = sample.outcomes.get(outcome, 0.0) - previous.get(outcome, 0.0)
                    buckets[slot][outcome] += max(0, round(delta))
            previous = sample.outcomes
        return [{"ago_s": 60.0 * (slot + 1), **buckets[slot]} for slot in reversed(range(slots))]

    def depth(self, latest: Sample) -> list[dict[str, Any]]:
        """Submissions waiting at each sample in the window, oldest first."""
        return [
            {"ago_s": round(latest.at - sample.at, 1), "waiting": sample.waiting}
            for sample in [*self._samples, latest]
            if sample.waiting is not None and latest.at - sample.at <= self.window
        ]

    def failures(self, latest: Sample) -> list[dict[str, Any]]:
        """Failed platform calls in the window by class, most frequent first, with how long
        ago each class was last seen (to the sampling interval)."""
        horizon = latest.at - self.window
        baseline: Mapping[str, float] = {}
        last_seen: dict[str, float] = {}
        previous: Mapping[str, float] = {}
        for sample in [*self._samples, latest]:
            if sample.at <= horizon:
                baseline = sample.failures
            for name, total in sample.failures.items():
                if total > previous.get(name, 0.0):
                    last_seen[name] = sample.at
            previous = sample.failures
        found = []
        for name, total in latest.failures.items():
            count = round(total - baseline.get(name, 0.0))
            if count > 0:
                found.append(
                    {
                        "class": name,
                        "words": _FAILURE_WORDS.get(name, name.replace("_", " ")),
                        "count": count,
                        "last_seen_ago_s": round(latest.at - last_seen.get(name, latest.at), 1),
                    }
                )
        return sorted(found, key=lambda entry: (-entry["count"], entry["class"]))

    def outages(self, now: float) -> list[dict[str, Any]]:
        """Outages in the window, oldest first, as seconds ago (`end_ago_s` None while on)."""
        return [
            {
                "start_ago_s": round(now - outage.start, 1),
                "end_ago_s": round(now - outage.end, 1) if outage.end is not None else None,
            }
            for outage in self._outages
            if outage.end is None or now - outage.end <= self.window
        ]


class StatusPage:
    """Serves `/status`. Built inside the running gateway, it samples the gateway into its
    history every `interval` seconds until the gateway stops (or `close()`)."""

    def __init__(self, gateway: Gateway, *, interval: float = SAMPLE_SECONDS) -> None:
        self._gateway = gateway
        self.history = StatusHistory(gateway.clock, interval=interval)
        gateway.breakers.add_listener(self.history.transition)
        self._task: asyncio.Task[None] | None = None
        with contextlib.suppress(RuntimeError):  # no running loop: a caller samples by hand
            asyncio.get_running_loop()
            self._task = asyncio.create_task(self._sample_forever(), name="status-sampler")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def sample(self) -> Sample:
        """The gateway's counters now (not added to the history)."""
        gateway = self._gateway
        waiting: int | None
        try:
            counts = await gateway.store.counts()
            waiting = sum(counts.by_state.get(state, 0) for state in WAITING)
        except StoreError:
            waiting = None
        failures = _totals(gateway.metrics.upstream_attempts, "result")
        failures.pop("success", None)
        return Sample(
            at=gateway.clock.wall(),
            outcomes=_totals(gateway.metrics.requests, "outcome"),
            failures=failures,
            waiting=waiting,
        )

    async def _sample_forever(self) -> None:
        # The dispatcher stops first when the gateway shuts down, before the store closes.
        while self._gateway.dispatcher.running:
            try:
                self.history.add(await self.sample())
            except Exception:
                log.exception("cannot sample the gateway for /status")
            await self._gateway.clock.sleep(self.history.interval)

    async def facts(self) -> dict[str, Any]:
        gateway = self._gateway
        latest = await self.sample()
        now = latest.at
        outbox: dict[str, Any]
        try:
            counts = await gateway.store.counts()
            oldest = counts.oldest_queued_at
            outbox = {
                "counts": {state.value: counts.by_state.get(state, 0) for state in SubmissionState},
                "waiting": sum(counts.by_state.get(state, 0) for state in WAITING),
                "oldest_queued_age_s": round(now - oldest, 1) if oldest is not None else None,
            }
        except StoreError as exc:
            outbox = {"error": str(exc)}
        platform = gateway.health.snapshot()
        circuits = gateway.breakers.snapshot()
        return {
            "version": __version__,
            "now": _iso(now),
            "up_since": _iso(gateway.started_at),
            "availability": self._availability(now, platform, circuits),
            "platform": platform,
            "circuits": circuits,
            "dispatcher": {
                "paused": gateway.dispatcher.paused,
                "in_flight": gateway.dispatcher.in_flight,
            },
            "outbox": outbox,
            "errors": self.history.failures(latest),
            "history": {
                "window_s": self.history.window,
                "interval_s": self.history.interval,
                "minutes": self.history.minutes(latest),
                "depth": self.history.depth(latest),
                "outages": self.history.outages(now),
            },
        }

    def _availability(
        self, now: float, platform: Mapping[str, object], circuits: Iterable[Mapping[str, object]]
    ) -> dict[str, Any]:
        """Whether the platform is up, down, or held by on-call, and since when."""
        circuits = list(circuits)
        states = {str(c["state"]) for c in circuits}
        history = self.history
        since: float | None
        troubled = [c for c in circuits if CircuitState(str(c["state"])) in _TROUBLED]
        # Before any transition was seen (or after a restart), the breakers' own times.
        first = min(
            (t for c in troubled if (t := _parse_iso(c["since"])) is not None), default=None
        )
        if CircuitState.FORCED_OPEN.value in states:
            state, since = "held", history.down_since or first
        elif troubled:
            state, since = "down", history.down_since or first
        elif platform.get("status") == "down":
            state, since = "down", _parse_iso(platform.get("since"))
        else:
            state = "up"
            since = history.up_since or (
                _parse_iso(platform.get("since")) if platform.get("status") == "up" else None
            )
            since = since or self._gateway.started_at
        return {
            "state": state,
            "since": _iso(since) if since is not None else None,
            "since_ago_s": round(now - since, 1) if since is not None else None,
        }

    async def handle(self, request: web.Request) -> web.Response:
        facts = await self.facts()
        if request.query.get("format") == "json":
            return web.json_response(facts)
        return web.Response(text=render(facts), content_type="text/html", charset="utf-8")


def _totals(counter: Counter, label: str) -> dict[str, float]:
    """A labelled counter's values summed by one label."""
    totals: dict[str, float] = {}
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = sample.labels[label]
                totals[key] = totals.get(key, 0.0) + sample.value
    return totals


# -- rendering ---------------------------------------------------------------------------------

_CSS = """\
body{font:15px/1.45 system-ui,sans-serif;margin:2em auto;max-width:62em;padding:0 1em;color:#222}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.1em;margin:1.6em 0 .4em}
.good{color:#17612b} .warn{color:#8a5a00} .bad{color:#a11}
.since{font-size:1.1em;margin:.2em 0 1em} .alert{background:#fdecea;padding:.5em .8em;color:#a11}
.tiles{display:flex;gap:1em;flex-wrap:wrap;margin:1em 0}
.tile{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;min-width:9em}
.tile b{display:block;font-size:1.8em;font-variant-numeric:tabular-nums}
table{border-collapse:collapse;margin:.5em 0 1em}
td,th{padding:.2em .8em;border-bottom:1px solid #ddd;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums} tr.dead td,tr.unknown td{font-weight:600}
svg{display:block;max-width:100%;height:auto} svg text{font:11px system-ui,sans-serif;fill:#666}
.legend span{margin-right:1.2em;white-space:nowrap}
.legend i{display:inline-block;width:.8em;height:.8em;margin-right:.3em;vertical-align:-.05em}
small,.muted{color:#666}
"""

_HEADLINES = {
    "held": ("Sending held by on-call — submissions are being queued", "bad"),
    "down": ("Platform down — submissions are being queued", "bad"),
    "up": ("Platform up", "good"),
}

# Chart geometry (SVG user units): plot area and margins for the axis labels.
_PLOT_W, _PLOT_H, _LEFT, _BOTTOM, _TOP = 600.0, 100.0, 44.0, 18.0, 8.0


def render(facts: dict[str, Any]) -> str:
    """The status page for `facts` (as `StatusPage.facts` makes them); everything escaped."""
    e = html.escape
    availability = facts["availability"]
    outbox = facts["outbox"]
    counts: dict[str, int] = outbox.get("counts", {})
    waiting = int(outbox.get("waiting", 0))
    headline, tone = _HEADLINES.get(availability["state"], _HEADLINES["up"])
    if availability["state"] == "up" and waiting:
        headline, tone = f"Platform up — delivering {waiting} queued submissions", "warn"
    since = _since_sentence(availability)
    if availability["state"] != "up" and "counts" in outbox:
        until = "the platform is back" if availability["state"] == "down" else "on-call lets go"
        since += f" {waiting} submission(s) queued; each is delivered once, when {until}."
    alerts = ""
    if counts.get("dead"):
        alerts += (
            f"<p class='alert'>{counts['dead']} submission(s) gave up and need on-call "
            "(admin API: requeue or discard).</p>"
        )
    if facts["dispatcher"]["paused"]:
        alerts += "<p class='alert'>Delivery is paused by on-call: nothing queued is sent.</p>"
    if "error" in outbox:
        alerts += f"<p class='alert'>Store unavailable: {e(outbox['error'])}</p>"

    age = outbox.get("oldest_queued_age_s")
    tiles = "".join(
        f"<div class='tile'>{e(label)}<b>{value}</b><small>{e(note)}</small></div>"
        for label, value, note in (
            ("Queued", waiting if "counts" in outbox else "?", _waiting_note(counts)),
            ("Delivered", counts.get("delivered", "?"), "issued by the platform"),
            ("Dead", counts.get("dead", "?"), "need on-call"),
            (
                "Oldest queued",
                _duration(age) if age is not None else "—",
                "waiting the longest" if age is not None else "nothing queued",
            ),
        )
    )
    rows = "".join(
        f"<tr class='{e(state)}'><td>{e(state)}</td><td class='n'>{count}</td>"
        f"<td>{e(_STATE_WORDS.get(state, ''))}</td></tr>"
        for state, count in counts.items()
    )
    circuit_rows = (
        "".join(
            f"<tr><td>{e(str(c['name']))}</td>"
            f"<td>{e(_CIRCUIT_WORDS.get(str(c['state']), str(c['state'])))}</td>"
            f"<td>since {e(_clock_time(str(c['since'])))}</td>"
            f"<td>{e(str(c['reason'] or ''))}</td></tr>"
            for c in facts["circuits"]
        )
        or "<tr><td>no calls to the platform yet</td></tr>"
    )
    platform = facts["platform"]
    probe = (
        f"<p>Active health check: <b>{e(str(platform['status']))}</b> since "
        f"{e(_clock_time(str(platform['since'])))}.</p>"
        if platform.get("probes")
        else ""
    )
    history = facts.get("history")
    charts = _charts(history) if history else ""
    interval = float(history["interval_s"]) if history else 0.0
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<meta name="viewport" content="width=device-width,initial-scale=1">
<link rel="icon" href="data:,">
<title>{e(headline)} · invoice-gateway</title>
<style>
{_CSS}</style></head><body>
<h1 class="{tone}">{e(headline)}</h1>
<p class="since">{e(since)}</p>
{alerts}<div class="tiles">{tiles}</div>
{charts}
<h2>Problems with the platform in the last hour</h2>
{_errors_table(facts.get("errors", []), interval)}
<h2>Circuit</h2>{probe}<table>{circuit_rows}</table>
<h2>Outbox</h2>
<p>Dispatcher: {facts["dispatcher"]["in_flight"]} in flight.</p>
<table><tr><th>state</th><th>submissions</th><th>meaning</th></tr>{rows}</table>
<small>Gateway {e(facts["version"])}, up since {e(_clock_time(facts["up_since"]))} ·
refreshes every {REFRESH_SECONDS} s · {e(_clock_time(facts["now"]))} ·
JSON: <a href="?format=json">?format=json</a></small>
</body></html>
"""


def _since_sentence(availability: Mapping[str, Any]) -> str:
    since, ago = availability.get("since"), availability.get("since_ago_s")
    if since is None or ago is None:
        return ""
    verb = "Up" if availability["state"] == "up" else "Down"
    if availability["state"] == "held":
        verb = "Held"
    return f"{verb} since {_clock_time(since)} ({_duration(ago)} ago)."


def _waiting_note(counts: Mapping[str, int]) -> str:
    parts = [
        f"{counts[state.value]} {word}"
        for state, word in (
            (SubmissionState.QUEUED, "waiting"),
            (SubmissionState.DELIVERING, "being sent"),
            (SubmissionState.UNKNOWN, "being reconciled"),
        )
        if counts.get(state.value)
    ]
    return " · ".join(parts) or "nothing waiting"


def _errors_table(errors: list[dict[str, Any]], interval: float) -> str:
    if not errors:
        return "<p class='muted'>No failed calls to the platform in the last hour.</p>"
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(str(entry['words']))} <small>({e(str(entry['class']))})</small></td>"
        f"<td class='n'>{int(entry['count'])}</td>"
        f"<td>{_last_seen(float(entry['last_seen_ago_s']), interval)}</td></tr>"
        for entry in errors
    )
    return f"<table><tr><th>what went wrong</th><th>calls</th><th>seen</th></tr>{rows}</table>"


def _last_seen(ago: float, interval: float) -> str:
    # Samples are `interval` apart: a failure seen in the newest one happened within it.
    return f"in the last {_duration(interval)}" if ago < interval else f"{_duration(ago)} ago"


def _charts(history: Mapping[str, Any]) -> str:
    window = float(history["window_s"])
    minutes: list[dict[str, Any]] = history["minutes"]
    outages: list[dict[str, Any]] = history["outages"]
    totals = {outcome: sum(int(m[outcome]) for m in minutes) for outcome in OUTCOMES}
    legend = "".join(
        f"<span><i style='background:{_OUTCOME_COLOURS[o]}'></i>{o} {totals[o]}</span>"
        for o in OUTCOMES
    )
    down = "<span><i style='background:#f6d5d1'></i>platform down</span>" if outages else ""
    return (
        "<h2>Requests per minute, last hour</h2>"
        + _outcome_chart(minutes, outages, window)
        + f"<p class='legend'>{legend}{down}</p>"
        + "<h2>Submissions waiting, last hour</h2>"
        + _depth_chart(history["depth"], outages, window)
    )


def _x(ago: float, window: float) -> float:
    return _LEFT + _PLOT_W * (1 - min(max(ago, 0.0), window) / window)


def _y(value: float, peak: float) -> float:
    return _TOP + _PLOT_H * (1 - value / peak)


def _frame(label: str, peak: float, window: float, outages: list[dict[str, Any]], body: str) -> str:
    width, height = _LEFT + _PLOT_W + 4, _TOP + _PLOT_H + _BOTTOM
    shading = ""
    for outage in outages:
        left = _x(float(outage["start_ago_s"]), window)
        right = _x(float(outage["end_ago_s"] or 0.0), window)
        shading += (
            f"<rect x='{left:.1f}' y='{_TOP}' width='{max(right - left, 1.0):.1f}' "
            f"height='{_PLOT_H}' fill='#f6d5d1'><title>platform down</title></rect>"
        )
    bottom = _TOP + _PLOT_H
    axis = (
        f"<line x1='{_LEFT}' y1='{bottom}' x2='{_LEFT + _PLOT_W}' y2='{bottom}' stroke='#999'/>"
        f"<line x1='{_LEFT}' y1='{_TOP}' x2='{_LEFT + _PLOT_W}' y2='{_TOP}' stroke='#eee'/>"
        f"<text x='{_LEFT - 4}' y='{_TOP + 4}' text-anchor='end'>{_count(peak)}</text>"
        f"<text x='{_LEFT - 4}' y='{bottom}' text-anchor='end'>0</text>"
        f"<text x='{_LEFT}' y='{height - 3}'>{_duration(window)} ago</text>"
        f"<text x='{_LEFT + _PLOT_W / 2}' y='{height - 3}' text-anchor='middle'>"
        f"{_duration(window / 2)} ago</text>"
        f"<text x='{_LEFT + _PLOT_W}' y='{height - 3}' text-anchor='end'>now</text>"
    )
    return (
        f"<svg viewBox='0 0 {width:.0f} {height:.0f}' "
        f"width='{width:.0f}' height='{height:.0f}' role='img' "
        f"aria-label='{html.escape(label)}'>{shading}{axis}{body}</svg>"
    )


def _outcome_chart(
    minutes: list[dict[str, Any]], outages: list[dict[str, Any]], window: float
) -> str:
    peak = _nice(max((sum(int(m[o]) for o in OUTCOMES) for m in minutes), default=0))
    bars = []
    for minute in minutes:
        ago = float(minute["ago_s"])
        x, width = _x(ago, window), _PLOT_W * 60 / window
        base = 0.0
        rects = []
        for outcome in OUTCOMES:
            value = int(minute[outcome])
            if value:
                top = _y(base + value, peak)
                rects.append(
                    f"<rect x='{x + 0.5:.1f}' y='{top:.1f}' width='{max(width - 1, 1):.1f}' "
                    f"height='{_y(base, peak) - top:.1f}' fill='{_OUTCOME_COLOURS[outcome]}'/>"
                )
                base += value
        if rects:
            said = ", ".join(f"{minute[o]} {o}" for o in OUTCOMES if minute[o])
            when = f"{_duration(ago)} to {_duration(ago - 60)} ago" if ago > 60 else "last minute"
            bars.append(
                f"<g><title>{html.escape(when)}: {html.escape(said)}</title>{''.join(rects)}</g>"
            )
    return _frame("client requests per minute by outcome", peak, window, outages, "".join(bars))


def _depth_chart(depth: list[dict[str, Any]], outages: list[dict[str, Any]], window: float) -> str:
    points = [(float(p["ago_s"]), int(p["waiting"])) for p in depth]
    peak = _nice(max((waiting for _, waiting in points), default=0))
    body = ""
    if points:
        bottom = _TOP + _PLOT_H
        line = f"M{_x(points[0][0], window):.1f},{_y(points[0][1], peak):.1f}"
        for ago, waiting in points[1:]:
            line += f" H{_x(ago, window):.1f} V{_y(waiting, peak):.1f}"
        end = _x(points[-1][0], window)
        start = _x(points[0][0], window)
        area = f"{line} V{bottom} H{start:.1f} Z"
        body = (
            f"<path d='{area}' fill='#fbe3b0' stroke='none'/>"
            f"<path d='{line}' fill='none' stroke='#b26a00' stroke-width='1.5'/>"
            f"<circle cx='{end:.1f}' cy='{_y(points[-1][1], peak):.1f}' r='2.5' fill='#b26a00'>"
            f"<title>now: {points[-1][1]} waiting</title></circle>"
        )
    return _frame("submissions waiting to be delivered", peak, window, outages, body)


def _nice(peak: float) -> float:
    """A round axis maximum at or above `peak` (1, 2 or 5 times a power of ten)."""
    if peak <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(peak))
    return float(next(step * power for step in (1, 2, 5, 10) if step * power >= peak))


def _count(value: float) -> str:
    return f"{value:,.0f}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _iso(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall))


def _parse_iso(text: object) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return float(calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return None


def _clock_time(iso: str) -> str:
    """`2026-11-27T10:02:13Z` (or with fractions / an offset) as `10:02:13 UTC`."""
    return f"{iso[11:19]} UTC" if len(iso) >= 19 and iso[10] == "T" else iso
