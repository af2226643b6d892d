"""Facts (as `StatusFacts.gather` makes them) → the `/status` HTML.

The page is the Jinja2 template `templates/status.html`, autoescaped and strict about undefined
names (a fact the template expects and does not get is an error, never a blank). This module
turns the facts into the sentences, tiles and rows the template lays out, and draws the two
charts as inline SVG. The charts are drawn here rather than by a charting library: each is a
handful of rectangles and one path, and the libraries that write SVG either embed scripts or
bring a plotting stack with them, where the page must load nothing and run no script.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jinja2
from markupsafe import Markup

from gateway.ops.status.history import OUTCOMES
from gateway.outbox.submissions import SubmissionState

#: How often the browser reloads the page (a `<meta http-equiv="refresh">`; no script).
REFRESH_SECONDS = 10


def duration(seconds: float) -> str:
    """`42 s`, `17 min` or `2.5 h`."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def clock_time(iso: str) -> str:
    """`2026-11-27T10:02:13Z` (or with fractions / an offset) as `10:02:13 UTC`."""
    return f"{iso[11:19]} UTC" if len(iso) >= 19 and iso[10] == "T" else iso


#: The page's template: autoescaped, and a name it uses that is not given is an error.
ENVIRONMENT = jinja2.Environment(
    loader=jinja2.PackageLoader("gateway.ops.status", "templates"),
    autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=True),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
ENVIRONMENT.filters["clock_time"] = clock_time

#: What each state means to someone reading the page.
_STATE_WORDS = {
    "queued": "waiting to be sent",
    "delivering": "being sent now",
    "delivered": "issued by the platform",
    "failed": "refused by the platform (final)",
    "unknown": "answer lost — being reconciled",
    "dead": "gave up — needs on-call",
    "discarded": "discarded by on-call",
    "issue_failed": "accepted, then not issued — needs on-call",
    "issued_manually": "issued by hand in the tax bureau's portal (final)",
}
_CIRCUIT_WORDS = {
    "closed": "closed — traffic flows",
    "open": "open — failing fast, submissions are queued",
    "half_open": "half-open — trying one call",
    "forced_open": "forced open by on-call",
    "forced_closed": "forced closed by on-call",
}
_HEADLINES = {
    "held": ("Sending held by on-call — submissions are being queued", "bad"),
    "down": ("Platform down — submissions are being queued", "bad"),
    "up": ("Platform up", "good"),
}
OUTCOME_COLOURS = {
    "forwarded": "#2e7d32",
    "replayed": "#1e6fbf",
    "queued": "#e09b00",
    "rejected": "#c62828",
}
DOWN_COLOUR = "#f6d5d1"

# Chart geometry (SVG user units): plot area and margins for the axis labels.
_PLOT_W, _PLOT_H, _LEFT, _BOTTOM, _TOP = 600.0, 100.0, 44.0, 18.0, 8.0


@dataclass(frozen=True, slots=True)
class Tile:
    label: str
    value: int | str
    note: str


@dataclass(frozen=True, slots=True)
class StateRow:
    state: str
    count: int
    words: str


@dataclass(frozen=True, slots=True)
class CircuitRow:
    name: str
    words: str
    since: str
    reason: str


@dataclass(frozen=True, slots=True)
class ErrorRow:
    words: str
    failure_class: str
    count: int
    seen: str


@dataclass(frozen=True, slots=True)
class IncidentLine:
    message: str
    set_at: str
    set_by: str


@dataclass(frozen=True, slots=True)
class Probe:
    status: str
    since: str


@dataclass(frozen=True, slots=True)
class LegendEntry:
    outcome: str
    colour: str
    total: int


@dataclass(frozen=True, slots=True)
class Charts:
    outcomes: Markup
    depth: Markup
    legend: Sequence[LegendEntry]
    outages: bool


def render(facts: Mapping[str, Any]) -> str:
    """The status page for `facts`; every value shown is escaped by the template."""
    availability = facts["availability"]
    outbox = facts["outbox"]
    counts: Mapping[str, int] = outbox.get("counts", {})
    waiting = int(outbox.get("waiting", 0))
    headline, tone = _HEADLINES.get(availability["state"], _HEADLINES["up"])
    if availability["state"] == "up" and waiting:
        headline, tone = f"Platform up — delivering {waiting} queued submissions", "warn"
    since = _since_sentence(availability)
    if availability["state"] != "up" and "counts" in outbox:
        until = "the platform is back" if availability["state"] == "down" else "on-call lets go"
        since += f" {waiting} submission(s) queued; each is delivered once, when {until}."
    alerts = []
    if counts.get("dead"):
        alerts.append(
            f"{counts['dead']} submission(s) gave up and need on-call "
            "(admin API: requeue or discard)."
        )
    if facts.get("reads_endpoint") == "backup":
        alerts.append(
            "Reads are answered by the platform's backup address; submissions wait for the primary."
        )
    if facts["dispatcher"]["paused"]:
        alerts.append("Delivery is paused by on-call: nothing queued is sent.")
    if "error" in outbox:
        alerts.append(f"Store unavailable: {outbox['error']}")
    age = outbox.get("oldest_queued_age_s")
    tiles = [
        Tile("Queued", waiting if "counts" in outbox else "?", _waiting_note(counts)),
        Tile("Delivered", counts.get("delivered", "?"), "issued by the platform"),
        Tile("Dead", counts.get("dead", "?"), "need on-call"),
        Tile(
            "Oldest queued",
            duration(age) if age is not None else "—",
            "waiting the longest" if age is not None else "nothing queued",
        ),
    ]
    platform = facts["platform"]
    history = facts.get("history")
    interval = float(history["interval_s"]) if history else 0.0
    incident = facts.get("incident")
    template = ENVIRONMENT.get_template("status.html")
    return template.render(
        facts=facts,
        incident=(
            IncidentLine(
                str(incident["message"]),
                clock_time(str(incident["set_at"])),
                str(incident["set_by"]),
            )
            if incident
            else None
        ),
        refresh_seconds=REFRESH_SECONDS,
        down_colour=DOWN_COLOUR,
        headline=headline,
        tone=tone,
        since=since,
        alerts=alerts,
        tiles=tiles,
        charts=_charts(history) if history else None,
        errors=[
            ErrorRow(
                words=str(entry["words"]),
                failure_class=str(entry["class"]),
                count=int(entry["count"]),
                seen=_last_seen(float(entry["last_seen_ago_s"]), interval),
            )
            for entry in facts["errors"]
        ],
        probe=(
            Probe(str(platform["status"]), clock_time(str(platform["since"])))
            if platform.get("probes")
            else None
        ),
        circuits=[
            CircuitRow(
                name=str(c["name"]),
                words=_CIRCUIT_WORDS.get(str(c["state"]), str(c["state"])),
                since=clock_time(str(c["since"])),
                reason=str(c["reason"] or ""),
            )
            for c in facts["circuits"]
        ],
        states=[
            StateRow(state, int(count), _STATE_WORDS.get(state, ""))
            for state, count in counts.items()
        ],
    )


def _since_sentence(availability: Mapping[str, Any]) -> str:
    since, ago = availability.get("since"), availability.get("since_ago_s")
    if since is None or ago is None:
        return ""
    verb = "Up" if availability["state"] == "up" else "Down"
    if availability["state"] == "held":
        verb = "Held"
    return f"{verb} since {clock_time(since)} ({duration(ago)} ago)."


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


def _last_seen(ago: float, interval: float) -> str:
    # Samples are `interval` apart: a failure seen in the newest one happened within it.
    return f"in the last {duration(interval)}" if ago < interval else f"{duration(ago)} ago"


# -- the charts --------------------------------------------------------------------------------
#
# Built with `Markup(...).format(...)` and `Markup("").join(...)`, which escape every argument
# that is not already `Markup`: each value put into the SVG is either escaped that way or a
# number formatted here, so the result is safe to hand to the autoescaping template as `Markup`.


def _charts(history: Mapping[str, Any]) -> Charts:
    window = float(history["window_s"])
    minutes: list[dict[str, Any]] = history["minutes"]
    outages: list[dict[str, Any]] = history["outages"]
    return Charts(
        outcomes=_outcome_chart(minutes, outages, window),
        depth=_depth_chart(history["depth"], outages, window),
        legend=[
            LegendEntry(outcome, OUTCOME_COLOURS[outcome], sum(int(m[outcome]) for m in minutes))
            for outcome in OUTCOMES
        ],
        outages=bool(outages),
    )


def _x(ago: float, window: float) -> float:
    return _LEFT + _PLOT_W * (1 - min(max(ago, 0.0), window) / window)


def _y(value: float, peak: float) -> float:
    return _TOP + _PLOT_H * (1 - value / peak)


def _frame(
    label: str, peak: float, window: float, outages: list[dict[str, Any]], body: Markup
) -> Markup:
    width, height = _LEFT + _PLOT_W + 4, _TOP + _PLOT_H + _BOTTOM
    shades = []
    for outage in outages:
        left = _x(float(outage["start_ago_s"]), window)
        right = _x(float(outage["end_ago_s"] or 0.0), window)
        shades.append(
            Markup(
                "<rect x='{:.1f}' y='{}' width='{:.1f}' height='{}' fill='{}'>"
                "<title>platform down</title></rect>"
            ).format(left, _TOP, max(right - left, 1.0), _PLOT_H, DOWN_COLOUR)
        )
    shading = Markup("").join(shades)
    bottom = _TOP + _PLOT_H
    axis = Markup(
        "<line x1='{left}' y1='{bottom}' x2='{right}' y2='{bottom}' stroke='#999'/>"
        "<line x1='{left}' y1='{top}' x2='{right}' y2='{top}' stroke='#eee'/>"
        "<text x='{label_x}' y='{label_top}' text-anchor='end'>{peak}</text>"
        "<text x='{label_x}' y='{bottom}' text-anchor='end'>0</text>"
        "<text x='{left}' y='{base}'>{window} ago</text>"
        "<text x='{middle}' y='{base}' text-anchor='middle'>{half} ago</text>"
        "<text x='{right}' y='{base}' text-anchor='end'>now</text>"
    ).format(
        left=_LEFT,
        right=_LEFT + _PLOT_W,
        middle=_LEFT + _PLOT_W / 2,
        top=_TOP,
        bottom=bottom,
        base=height - 3,
        label_x=_LEFT - 4,
        label_top=_TOP + 4,
        peak=f"{peak:,.0f}",
        window=duration(window),
        half=duration(window / 2),
    )
    return Markup(
        "<svg viewBox='0 0 {width:.0f} {height:.0f}' width='{width:.0f}' height='{height:.0f}' "
        "role='img' aria-label='{label}'>{shading}{axis}{body}</svg>"
    ).format(width=width, height=height, label=label, shading=shading, axis=axis, body=body)


def _outcome_chart(
    minutes: list[dict[str, Any]], outages: list[dict[str, Any]], window: float
) -> Markup:
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
                    Markup(
                        "<rect x='{:.1f}' y='{:.1f}' width='{:.1f}' height='{:.1f}' fill='{}'/>"
                    ).format(
                        x + 0.5,
                        top,
                        max(width - 1, 1),
                        _y(base, peak) - top,
                        OUTCOME_COLOURS[outcome],
                    )
                )
                base += value
        if rects:
            said = ", ".join(f"{minute[o]} {o}" for o in OUTCOMES if minute[o])
            when = f"{duration(ago)} to {duration(ago - 60)} ago" if ago > 60 else "last minute"
            bars.append(
                Markup("<g><title>{}: {}</title>{}</g>").format(when, said, Markup("").join(rects))
            )
    return _frame(
        "client requests per minute by outcome", peak, window, outages, Markup("").join(bars)
    )


def _depth_chart(
    depth: list[dict[str, Any]], outages: list[dict[str, Any]], window: float
) -> Markup:
    points = [(float(p["ago_s"]), int(p["waiting"])) for p in depth]
    peak = _nice(max((waiting for _, waiting in points), default=0))
    body = Markup("")
    if points:
        bottom = _TOP + _PLOT_H
        line = f"M{_x(points[0][0], window):.1f},{_y(points[0][1], peak):.1f}"
        for ago, waiting in points[1:]:
            line += f" H{_x(ago, window):.1f} V{_y(waiting, peak):.1f}"
        area = f"{line} V{bottom} H{_x(points[0][0], window):.1f} Z"
        body = Markup(
            "<path d='{area}' fill='#fbe3b0' stroke='none'/>"
            "<path d='{line}' fill='none' stroke='#b26a00' stroke-width='1.5'/>"
            "<circle cx='{x:.1f}' cy='{y:.1f}' r='2.5' fill='#b26a00'>"
            "<title>now: {waiting} waiting</title></circle>"
        ).format(
            area=area,
            line=line,
            x=_x(points[-1][0], window),
            y=_y(points[-1][1], peak),
            waiting=points[-1][1],
        )
    return _frame("submissions waiting to be delivered", peak, window, outages, body)


def _nice(peak: float) -> float:
    """A round axis maximum at or above `peak` (1, 2 or 5 times a power of ten)."""
    if peak <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(peak))
    return float(next(step * power for step in (1, 2, 5, 10) if step * power >= peak))
