"""The Grafana dashboards in this folder, generated from the metrics the gateway exposes.

    python dashboards/generate.py          # (re)write outage-overview.json and traffic-slo.json
    python dashboards/generate.py --check  # exit 1 when either file is not what this would write

Every metric an expression below names is checked, when the dashboards are built, against the
metric families of a real gateway's registry (opened in process on a scratch store, never
calling the platform) and the recording rules in deploy/prometheus/rules/: renaming a metric
fails `make lint`, not a dashboard during an outage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import structlog
import yaml

from gateway.app import open_gateway
from gateway.config import parse_config

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "dashboards"
RULES = ROOT / "deploy" / "prometheus" / "rules"

#: The acceptance SLO of deploy/prometheus/rules/slo.yml (tests check the two agree).
SLO_OBJECTIVE = 0.999
ERROR_BUDGET = 0.001
#: Burn-rate windows of the SLO alerts, with the rate each alert pages at.
BURN_WINDOWS = (("1h", 14.4), ("6h", 6.0), ("3d", 1.0))
#: The business's deadline for a queued submission (GatewayOldestQueuedPastDeadline).
DEADLINE_SECONDS = 1800

# -- the names ----------------------------------------------------------------------------------
# Sample names as Prometheus stores them (counters with `_total`, histograms' `_bucket`).

REQUESTS = "gateway_requests_total"
REQUEST_ERRORS = "gateway_request_errors_total"
REQUEST_DURATION = "gateway_request_duration_seconds_bucket"
IN_FLIGHT = "gateway_in_flight_requests"
UPSTREAM_ATTEMPTS = "gateway_upstream_attempts_total"
UPSTREAM_DURATION = "gateway_upstream_duration_seconds_bucket"
BUSINESS_CODES = "gateway_upstream_business_codes_total"
RETRIES = "gateway_retries_total"
RETRY_BUDGET_REJECTIONS = "gateway_retry_budget_rejections_total"
CIRCUIT_STATE = "gateway_circuit_state"
CIRCUIT_TRANSITIONS = "gateway_circuit_transitions_total"
UPSTREAM_HEALTH = "gateway_upstream_health"
REPLAYS = "gateway_idempotent_replays_total"
ENQUEUED = "gateway_outbox_enqueued_total"
OUTBOX = "gateway_outbox_submissions"
OLDEST_QUEUED = "gateway_outbox_oldest_queued_age_seconds"
DELIVERED = "gateway_outbox_delivered_total"
RECONCILED = "gateway_outbox_reconciled_total"
FAILED = "gateway_outbox_failed_total"
DEAD = "gateway_outbox_dead_total"
PARKED = "gateway_outbox_parked_total"
REQUEUED = "gateway_outbox_requeued_total"
DISPATCHER_PAUSED = "gateway_dispatcher_paused"
DISPATCHER_IN_FLIGHT = "gateway_dispatcher_in_flight"
TOKEN_REFRESHES = "gateway_token_refreshes_total"  # noqa: S105 — a metric name, not a secret
TOKEN_AGE = "gateway_token_age_seconds"  # noqa: S105 — ditto
COMMIT_DURATION = "gateway_store_commit_duration_seconds_bucket"
COMMIT_BATCH = "gateway_store_commit_batch_size_bucket"
BUILD_INFO = "gateway_build_info"
START_TIME = "gateway_start_time_seconds"
# Recording rules (deploy/prometheus/rules/).
PLATFORM_DOWN = "gateway:platform_down"
PLATFORM_UP_AT = "gateway:platform_up:timestamp_seconds"


def acceptance_errors(window: str) -> str:
    return f"gateway:acceptance_errors:ratio_rate{window}"


# -- the metrics that exist ----------------------------------------------------------------------

_SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "unknown": ("",),
}


def sample_names(families: Iterable[tuple[str, str]]) -> frozenset[str]:
    """The sample names Prometheus stores for metric families given as (name, type)."""
    return frozenset(name + suffix for name, kind in families for suffix in _SAMPLE_SUFFIXES[kind])


def exposed_series() -> frozenset[str]:
    """Every sample name a gateway on the default profile exposes, read from its registry.

    The gateway is opened in process on a scratch SQLite store with the health probe removed
    and the platform at a closed local port, so nothing leaves the machine.
    """
    return asyncio.run(_exposed_series())


async def _exposed_series() -> frozenset[str]:
    raw = yaml.safe_load((ROOT / "config" / "gateway.yaml").read_text())
    raw["resilience"].pop("probe", None)
    raw["upstream"]["url"] = "http://127.0.0.1:9"
    environ = {
        "GATEWAY_DEMO_API_KEY": "scratch",
        "NUONUO_APP_KEY": "scratch",
        "NUONUO_APP_SECRET": "scratch",
        "NUONUO_USER_TAX": "scratch",
    }
    with tempfile.TemporaryDirectory(prefix="gateway-dashboards-") as scratch:
        raw["store_url"] = f"sqlite:///{Path(scratch) / 'gateway.db'}"
        config = parse_config(raw, environ, source="config/gateway.yaml")
        async with open_gateway(config) as gateway:
            families = [(f.name, f.type) for f in gateway.metrics.registry.collect()]
    return sample_names(families)


def recorded_series(rules_dir: Path = RULES) -> frozenset[str]:
    """The names the recording rules in `rules_dir` record."""
    names = set()
    for path in sorted(rules_dir.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            names.update(rule["record"] for rule in group["rules"] if "record" in rule)
    return frozenset(names)


# -- PromQL, as far as names go -------------------------------------------------------------------

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.:$])([A-Za-z_:][\w:]*)(?![\w:])(\s*\()?")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
    | {"group_left", "group_right", "inf", "nan"}
)


def metric_names(expr: str) -> frozenset[str]:
    """The metric names a PromQL expression selects (Grafana `$variables` allowed).

    Enough PromQL for what this project writes: strings, label matchers, ranges and grouping
    clauses are removed, then every identifier that is not a function call or keyword is a name.
    """
    text = _STRINGS.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGES.sub("", text)
    text = _GROUPING.sub("", text)
    return frozenset(
        match.group(1)
        for match in _IDENTIFIER.finditer(text)
        if match.group(2) is None and match.group(1).lower() not in _KEYWORDS
    )


def expressions(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of a dashboard's panels."""
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


# -- building blocks ---------------------------------------------------------------------------

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
TENANT = 'tenant=~"$tenant"'
OPERATION = 'operation=~"$operation"'
RATE = "$__rate_interval"


def target(expr: str, legend: str = "", *, instant: bool = False) -> dict[str, Any]:
    return {
        "datasource": DATASOURCE,
        "expr": expr,
        "legendFormat": legend or "__auto",
        "range": not instant,
        "instant": instant,
    }


def thresholds(*steps: tuple[float | None, str]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"value": v, "color": c} for v, c in steps]}


def value_mappings(texts: dict[int, tuple[str, str]]) -> list[dict[str, Any]]:
    options = {
        str(value): {"text": text, "color": color, "index": index}
        for index, (value, (text, color)) in enumerate(texts.items())
    }
    return [{"type": "value", "options": options}]


def panel(
    kind: str,
    title: str,
    description: str,
    targets: list[dict[str, Any]],
    *,
    width: int,
    height: int,
    unit: str = "short",
    steps: dict[str, Any] | None = None,
    mappings: list[dict[str, Any]] | None = None,
    no_value: str | None = None,
    minimum: float | None = None,
    options: dict[str, Any] | None = None,
    custom: dict[str, Any] | None = None,
    overrides: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": unit, "mappings": mappings or []}
    defaults["thresholds"] = steps or thresholds((None, "green"))
    if no_value is not None:
        defaults["noValue"] = no_value
    if minimum is not None:
        defaults["min"] = minimum
    if kind == "stat":
        defaults["color"] = {"mode": "thresholds"}
        base_options: dict[str, Any] = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
            "graphMode": "none",
            "justifyMode": "center",
            "textMode": "value_and_name" if len(targets) > 1 else "value",
            "orientation": "auto",
        }
    elif kind == "state-timeline":
        defaults["color"] = {"mode": "thresholds"}
        defaults["custom"] = {"fillOpacity": 80, "lineWidth": 0}
        base_options = {
            "showValue": "never",
            "mergeValues": True,
            "rowHeight": 0.8,
            "alignValue": "left",
            "legend": {"showLegend": False, "displayMode": "list", "placement": "bottom"},
            "tooltip": {"mode": "single", "sort": "none"},
        }
    else:
        defaults["color"] = {"mode": "palette-classic"}
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10,
            "showPoints": "never",
            "spanNulls": False,
            "thresholdsStyle": {"mode": "line" if steps else "off"},
            **(custom or {}),
        }
        base_options = {
            "legend": {"showLegend": True, "displayMode": "list", "placement": "bottom"},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    for ref, item in zip("ABCDEFGHIJ", targets, strict=False):
        item["refId"] = ref
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"w": width, "h": height},
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": {**base_options, **(options or {})},
        "targets": targets,
    }


def graph(
    title: str,
    description: str,
    *targets: dict[str, Any],
    width: int = 8,
    height: int = 8,
    minimum: float | None = 0,
    **options: Any,
) -> dict[str, Any]:
    """A time series panel in the usual shape: a third of a row, 8 high, its axis from 0."""
    return panel(
        "timeseries",
        title,
        description,
        list(targets),
        width=width,
        height=height,
        minimum=minimum,
        **options,
    )


def right_axis(ref: str, unit: str) -> dict[str, Any]:
    """A field override: query `ref` on the right-hand axis, in `unit`."""
    return {
        "matcher": {"id": "byFrameRefID", "options": ref},
        "properties": [
            {"id": "custom.axisPlacement", "value": "right"},
            {"id": "unit", "value": unit},
        ],
    }


def layout(rows: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Panels placed row by row, left to right, on Grafana's 24-column grid; ids in order."""
    placed = []
    y = 0
    for row in rows:
        x = 0
        for item in row:
            item["gridPos"].update(x=x, y=y)
            x += item["gridPos"]["w"]
            if x > 24:
                raise ValueError(f"row wider than 24 columns at {item['title']!r}")
        y += max(item["gridPos"]["h"] for item in row)
        placed.extend(row)
    for number, item in enumerate(placed, start=1):
        item["id"] = number
    return placed


def label_variable(name: str, label: str, metric: str) -> dict[str, Any]:
    query = f"label_values({metric}, {name})"
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-values"},
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "regex": "",
        "sort": 1,
        "hide": 0,
    }


def dashboard(
    *, uid: str, title: str, description: str, panels: list[dict[str, Any]], time_from: str
) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["invoice-gateway"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": time_from, "to": "now"},
        "timepicker": {},
        "timezone": "",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "links": [
            {
                "title": "Gateway dashboards",
                "type": "dashboards",
                "tags": ["invoice-gateway"],
                "asDropdown": False,
                "includeVars": True,
                "keepTime": True,
            }
        ],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "options": [],
                    "refresh": 1,
                    "regex": "",
                    "hide": 0,
                },
                label_variable("tenant", "Tenant", REQUESTS),
                label_variable("operation", "Operation", REQUESTS),
            ]
        },
        "panels": panels,
    }


# -- expressions shared by panels -----------------------------------------------------------------


def drained(window: str) -> str:
    """Submissions leaving the outbox per second: delivered (incl. reconciled), failed, dead,
    parked for on-call. Dispatcher counters are per process: summed over instances."""
    return (
        f"sum(rate({DELIVERED}[{window}]) + rate({FAILED}[{window}])"
        f" + rate({DEAD}[{window}]) + rate({PARKED}[{window}]))"
    )


#: The outbox is counted from the store; instances sharing one store report the same counts,
#: so they are combined with `max`, not `sum`.
BACKLOG = f'sum(max by (state) ({OUTBOX}{{state=~"queued|delivering"}}))'
#: gateway:platform_down without the recording rule, so the first panel works without rules.
PLATFORM_DOWN_RAW = (
    f'max({UPSTREAM_HEALTH}{{status="down"}} or {CIRCUIT_STATE}{{state=~"open|half_open"}})'
)


def state_code(metric: str, label: str, codes: dict[str, int], by: str) -> str:
    """One number per `by` for a one-hot state gauge: the code of the state whose value is 1
    (states left out, and all-zero, are 0)."""
    parts = " or ".join(
        f'{metric}{{{label}="{state}"}} * {code}' for state, code in codes.items() if code
    )
    return f"max by ({by}) ({parts})"


def quantiles(metric: str, selector: str, by: str, legend: str) -> list[dict[str, Any]]:
    group = f"{by}, le" if by else "le"
    return [
        target(
            f"histogram_quantile({q}, sum by ({group}) (rate({metric}{{{selector}}}[{RATE}])))",
            f"p{round(q * 100)}{legend}",
        )
        for q in (0.5, 0.95, 0.99)
    ]


CIRCUIT_CODES = {"closed": 0, "half_open": 1, "open": 2, "forced_open": 3, "forced_closed": 4}
CIRCUIT_MAPPINGS = value_mappings(
    {
        0: ("closed", "green"),
        1: ("half-open", "yellow"),
        2: ("open", "red"),
        3: ("forced open", "purple"),
        4: ("forced closed", "blue"),
    }
)
HEALTH_CODES = {"unknown": 0, "up": 1, "down": 2}
HEALTH_MAPPINGS = value_mappings(
    {0: ("unknown (no probe)", "text"), 1: ("up", "green"), 2: ("down", "red")}
)


# -- the outage overview -------------------------------------------------------------------------


def outage_overview() -> dict[str, Any]:
    """Is the platform down, since when, how much is queued, how fast is it draining, when will
    it be empty, is anything dead: one screen."""
    stats = [
        panel(
            "stat",
            "Platform",
            "Down while the active probe says so or a circuit breaker is open or half-open.",
            [target(PLATFORM_DOWN_RAW, "platform")],
            width=4,
            height=5,
            mappings=value_mappings({0: ("UP", "green"), 1: ("DOWN", "red")}),
            steps=thresholds((None, "green"), (1, "red")),
            no_value="no data",
        ),
        panel(
            "stat",
            "Down for",
            "Time since the gateway last saw the platform up (recording rule "
            f"{PLATFORM_UP_AT}); empty while it is up.",
            [
                target(
                    f"(time() - max(max_over_time({PLATFORM_UP_AT}[7d])))"
                    f" and on () (max({PLATFORM_DOWN}) == 1)",
                    "down for",
                )
            ],
            width=4,
            height=5,
            unit="s",
            steps=thresholds((None, "orange"), (900, "red")),
            no_value="—",
        ),
        panel(
            "stat",
            "Queued",
            "Submissions waiting for delivery (queued and being delivered).",
            [target(BACKLOG, "queued")],
            width=3,
            height=5,
            steps=thresholds((None, "green"), (1, "orange")),
        ),
        panel(
            "stat",
            "Draining at",
            "Submissions leaving the outbox per second over the last 5 minutes.",
            [target(drained("5m"), "drained")],
            width=3,
            height=5,
            unit="ops",
            steps=thresholds((None, "blue")),
        ),
        panel(
            "stat",
            "Empty in",
            "Queued ÷ drain rate: when the backlog will be gone at the current pace. Empty "
            "while nothing drains (the platform is down, or the dispatcher paused).",
            [target(f"{BACKLOG} / ({drained('5m')} > 0)", "ETA")],
            width=4,
            height=5,
            unit="s",
            steps=thresholds((None, "green"), (600, "orange"), (DEADLINE_SECONDS, "red")),
            no_value="not draining",
        ),
        panel(
            "stat",
            "Oldest queued",
            f"Age of the oldest queued submission; the deadline alert is at {DEADLINE_SECONDS}s.",
            [target(f"max({OLDEST_QUEUED})", "oldest")],
            width=3,
            height=5,
            unit="s",
            steps=thresholds((None, "green"), (300, "orange"), (DEADLINE_SECONDS, "red")),
        ),
        panel(
            "stat",
            "Dead",
            "Submissions that ran out of attempts or age: on-call must replay or discard them.",
            [target(f'max({OUTBOX}{{state="dead"}})', "dead")],
            width=3,
            height=5,
            steps=thresholds((None, "green"), (1, "red")),
        ),
    ]
    timelines = [
        panel(
            "state-timeline",
            "Circuit state",
            "Each circuit breaker's state over time.",
            [target(state_code(CIRCUIT_STATE, "state", CIRCUIT_CODES, "breaker"), "{{breaker}}")],
            width=12,
            height=5,
            mappings=CIRCUIT_MAPPINGS,
        ),
        panel(
            "state-timeline",
            "Platform health (active probe)",
            "What the active health probe concludes, per gateway instance.",
            [
                target(
                    state_code(UPSTREAM_HEALTH, "status", HEALTH_CODES, "instance"), "{{instance}}"
                )
            ],
            width=12,
            height=5,
            mappings=HEALTH_MAPPINGS,
        ),
    ]
    upstream = [
        graph(
            "Upstream error ratio by class",
            "Share of calls to the platform that failed, by failure class.",
            target(
                f'sum by (result) (rate({UPSTREAM_ATTEMPTS}{{result!="success", {OPERATION}}}'
                f"[{RATE}])) / ignoring (result) group_left"
                f" sum(rate({UPSTREAM_ATTEMPTS}{{{OPERATION}}}[{RATE}]))",
                "{{result}}",
            ),
            width=12,
            unit="percentunit",
            custom={"drawStyle": "bars", "fillOpacity": 60, "stacking": {"mode": "normal"}},
        ),
        panel(
            "timeseries",
            "Upstream latency",
            "Duration of calls to the platform: p50, p95, p99.",
            quantiles(UPSTREAM_DURATION, OPERATION, "", ""),
            width=12,
            height=8,
            unit="s",
            minimum=0,
        ),
    ]
    outbox = [
        graph(
            "Queued vs drained",
            "Submissions in the outbox by state (left) against submissions queued and drained "
            "per second (right).",
            target(f'max by (state) ({OUTBOX}{{state=~"queued|delivering|unknown"}})', "{{state}}"),
            target(f"sum(rate({ENQUEUED}{{{TENANT}, {OPERATION}}}[{RATE}]))", "queued per second"),
            target(drained(RATE), "drained per second"),
            width=12,
            overrides=[right_axis("B", "ops"), right_axis("C", "ops")],
        ),
        graph(
            "Oldest queued",
            "Age of the oldest queued submission; the line is the business deadline.",
            target(f"max({OLDEST_QUEUED})", "oldest queued"),
            width=6,
            unit="s",
            steps=thresholds((None, "green"), (DEADLINE_SECONDS, "red")),
        ),
        graph(
            "ETA to empty",
            "Queued ÷ drain rate over 5 minutes; gaps while nothing drains.",
            target(f"{BACKLOG} / ({drained('5m')} > 0)", "time to empty"),
            width=6,
            unit="s",
        ),
    ]
    details = [
        graph(
            "Client answers by outcome",
            "What clients got: forwarded (the platform answered), queued (202), replayed "
            "(same key), rejected (the gateway answered itself).",
            target(
                f"sum by (outcome) (rate({REQUESTS}{{{TENANT}, {OPERATION}}}[{RATE}]))",
                "{{outcome}}",
            ),
            unit="reqps",
        ),
        graph(
            "Dead and parked",
            "Dead submissions in the outbox (left); submissions dying or parked for on-call "
            "per second (right).",
            target(f'max({OUTBOX}{{state="dead"}})', "dead in the outbox"),
            target(f"sum(rate({DEAD}[{RATE}]))", "dying per second"),
            target(f"sum(rate({PARKED}[{RATE}]))", "parked per second"),
            overrides=[right_axis("B", "ops"), right_axis("C", "ops")],
        ),
        graph(
            "Dispatcher",
            "Deliveries in flight, and 1 while on-call has paused the dispatcher.",
            target(f"sum({DISPATCHER_IN_FLIGHT})", "in flight"),
            target(f"max({DISPATCHER_PAUSED})", "paused"),
            target(f"sum(rate({REQUEUED}[{RATE}]))", "put back per second"),
        ),
        graph(
            "Platform business codes",
            "Business codes in the platform's answers (070601: signature rejected, 070301: "
            "token rejected, 040102: busy).",
            target(
                f"sum by (code) (rate({BUSINESS_CODES}{{{OPERATION}}}[{RATE}]))",
                "{{code}}",
            ),
            unit="ops",
        ),
        graph(
            "Circuit transitions",
            "Circuit breaker state changes, by the state entered.",
            target(
                f"sum by (breaker, to) (increase({CIRCUIT_TRANSITIONS}[{RATE}]))",
                "{{breaker}} → {{to}}",
            ),
            custom={"drawStyle": "bars", "fillOpacity": 60},
        ),
        graph(
            "Access token",
            "Token requests to the platform by result (left), age of the token in use (right).",
            target(f"sum by (result) (increase({TOKEN_REFRESHES}[{RATE}]))", "{{result}}"),
            target(f"max({TOKEN_AGE})", "token age"),
            overrides=[right_axis("B", "s")],
        ),
    ]
    return dashboard(
        uid="invoice-gateway-outage",
        title="Invoice gateway — outage overview",
        description="Is the platform down, since when, how much is queued, how fast is it "
        "draining, when will it be empty, is anything dead. Generated by dashboards/generate.py.",
        panels=layout([stats, timelines, upstream, outbox, details[:3], details[3:]]),
        time_from="now-3h",
    )


# -- traffic and SLO -----------------------------------------------------------------------------


def traffic_slo() -> dict[str, Any]:
    """RED per operation, acceptance availability against its SLO, error-budget burn."""
    availability = [
        panel(
            "stat",
            f"Acceptance availability ({window})",
            f"Submissions answered 2xx (forwarded, queued or replayed) over all submissions "
            f"but the client's own 4xx, over {window}. SLO {SLO_OBJECTIVE:.1%}.",
            [target(f"1 - max({acceptance_errors(window)})", "availability")],
            width=4,
            height=5,
            unit="percentunit",
            steps=thresholds((None, "red"), (SLO_OBJECTIVE, "green")),
        )
        for window, _ in BURN_WINDOWS
    ]
    burn_stats = [
        panel(
            "stat",
            f"Budget burn rate ({window})",
            f"Error ratio over {window} ÷ error budget ({ERROR_BUDGET}). 1 spends the budget in "
            f"exactly 30 days; the {window} alert is at {rate:g}.",
            [target(f"max({acceptance_errors(window)}) / {ERROR_BUDGET}", "burn rate")],
            width=4,
            height=5,
            unit="x",
            steps=thresholds((None, "green"), (1, "orange"), (rate, "red")),
        )
        for window, rate in BURN_WINDOWS
    ]
    slo = [
        graph(
            "Acceptance availability",
            f"Over 5 minutes and 1 hour; the line is the SLO ({SLO_OBJECTIVE:.1%}).",
            target(f"1 - max({acceptance_errors('5m')})", "5m"),
            target(f"1 - max({acceptance_errors('1h')})", "1h"),
            width=12,
            unit="percentunit",
            steps=thresholds((None, "red"), (SLO_OBJECTIVE, "green")),
            minimum=None,
        ),
        panel(
            "timeseries",
            "Error-budget burn rate",
            "Each window's error ratio ÷ the error budget; alerts page at 14.4 (1h and 5m) and "
            "6 (6h and 30m), and open a ticket at 1 (3d and 6h).",
            [
                target(f"max({acceptance_errors(window)}) / {ERROR_BUDGET}", window)
                for window in ("5m", "30m", "1h", "6h", "3d")
            ],
            width=12,
            height=8,
            unit="x",
            minimum=0,
            steps=thresholds((None, "green"), (1, "orange"), (6, "red"), (14.4, "dark-red")),
        ),
    ]
    selector = f"{TENANT}, {OPERATION}"
    red = [
        graph(
            "Rate by operation",
            "Client requests per second.",
            target(f"sum by (operation) (rate({REQUESTS}{{{selector}}}[{RATE}]))", "{{operation}}"),
            unit="reqps",
        ),
        graph(
            "Errors by operation and class",
            "Client requests that did not end in success, per second, by error class.",
            target(
                f"sum by (operation, error_class) (rate({REQUEST_ERRORS}{{{OPERATION}}}[{RATE}]))",
                "{{operation}} {{error_class}}",
            ),
            unit="reqps",
        ),
        graph(
            "5xx ratio by operation",
            "Share of client requests answered 5xx.",
            target(
                f'sum by (operation) (rate({REQUESTS}{{status_class="5xx", {selector}}}'
                f"[{RATE}])) / sum by (operation) (rate({REQUESTS}{{{selector}}}[{RATE}]))",
                "{{operation}}",
            ),
            unit="percentunit",
        ),
    ]
    duration = [
        panel(
            "timeseries",
            "Duration by operation",
            "Time to answer a client: p50, p95, p99 per operation (buckets sit at the SLO "
            "thresholds 10 ms, 250 ms, 1 s, 10 s).",
            quantiles(REQUEST_DURATION, OPERATION, "operation", " {{operation}}"),
            width=12,
            height=8,
            unit="s",
            minimum=0,
        ),
        graph(
            "Answers by outcome and status",
            "What clients got, per second.",
            target(
                f"sum by (outcome, status_class) (rate({REQUESTS}{{{selector}}}[{RATE}]))",
                "{{outcome}} {{status_class}}",
            ),
            width=12,
            unit="reqps",
        ),
    ]
    resilience = [
        graph(
            "Retries and budget rejections",
            "Retries within client requests per second, and retries the retry budget refused.",
            target(f"sum by (operation) (rate({RETRIES}{{{OPERATION}}}[{RATE}]))", "{{operation}}"),
            target(f"sum(rate({RETRY_BUDGET_REJECTIONS}[{RATE}]))", "refused by the budget"),
            unit="ops",
        ),
        graph(
            "Idempotent replays",
            "Requests answered from a stored result (the same key sent again).",
            target(f"sum by (operation) (rate({REPLAYS}{{{OPERATION}}}[{RATE}]))", "{{operation}}"),
            unit="reqps",
        ),
        graph(
            "In flight",
            "Client requests being served, and deliveries the dispatcher has in flight.",
            target(f"sum({IN_FLIGHT})", "client requests"),
            target(f"sum({DISPATCHER_IN_FLIGHT})", "deliveries"),
        ),
    ]
    store = [
        panel(
            "timeseries",
            "Store commit latency",
            "One group commit (transaction plus fsync): p50 and p99. Every 202 waits for one.",
            [
                target(
                    f"histogram_quantile({q}, sum by (le) (rate({COMMIT_DURATION}[{RATE}])))",
                    f"p{round(q * 100)}",
                )
                for q in (0.5, 0.99)
            ],
            width=8,
            height=8,
            unit="s",
            minimum=0,
        ),
        panel(
            "timeseries",
            "Writes per commit",
            "How many writes shared one commit (group commit): p50 and p99.",
            [
                target(
                    f"histogram_quantile({q}, sum by (le) (rate({COMMIT_BATCH}[{RATE}])))",
                    f"p{round(q * 100)}",
                )
                for q in (0.5, 0.99)
            ],
            width=8,
            height=8,
            minimum=0,
        ),
        panel(
            "stat",
            "Builds running",
            "Gateway instances by version, and the shortest uptime.",
            [
                target(
                    f"count by (version, python) ({BUILD_INFO})", "{{version}} (Python {{python}})"
                ),
                target(f"min(time() - {START_TIME})", "shortest uptime"),
            ],
            width=8,
            height=8,
            steps=thresholds((None, "blue")),
            overrides=[
                {
                    "matcher": {"id": "byFrameRefID", "options": "B"},
                    "properties": [{"id": "unit", "value": "s"}],
                }
            ],
        ),
    ]
    return dashboard(
        uid="invoice-gateway-traffic-slo",
        title="Invoice gateway — traffic and SLO",
        description="RED per operation, acceptance availability against its SLO, error-budget "
        "burn. Generated by dashboards/generate.py.",
        panels=layout([availability + burn_stats, slo, red, duration, resilience, store]),
        time_from="now-24h",
    )


# -- writing -----------------------------------------------------------------------------------

OUTPUTS: dict[str, Callable[[], dict[str, Any]]] = {
    "outage-overview.json": outage_overview,
    "traffic-slo.json": traffic_slo,
}


def render(build: Callable[[], dict[str, Any]]) -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def unknown_names(dashboards: dict[str, dict[str, Any]], known: frozenset[str]) -> list[str]:
    """`file: name` for every metric name a panel uses that is not in `known`."""
    return sorted(
        f"{filename}: {name}"
        for filename, board in dashboards.items()
        for expr in expressions(board)
        for name in metric_names(expr) - known
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the files differ from what would be written"
    )
    args = parser.parse_args(argv)
    # The scratch gateway's own info lines (dispatcher started, stopped) are noise here.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    rendered = {name: render(build) for name, build in OUTPUTS.items()}
    known = exposed_series() | recorded_series()
    unknown = unknown_names({n: json.loads(text) for n, text in rendered.items()}, known)
    if unknown:
        print("metrics the gateway does not expose:\n  " + "\n  ".join(unknown), file=sys.stderr)
        return 1
    stale = [
        n
        for n, text in rendered.items()
        if not (HERE / n).is_file() or (HERE / n).read_text() != text
    ]
    if args.check:
        for name in stale:
            print(f"dashboards/{name} is stale: run python dashboards/generate.py", file=sys.stderr)
        return 1 if stale else 0
    for name in stale:
        (HERE / name).write_text(rendered[name])
        print(f"wrote dashboards/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
