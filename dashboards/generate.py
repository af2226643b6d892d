"""The Grafana dashboards in this folder, built with Grafana's Foundation SDK and checked against
the metrics the gateway exposes.

    python dashboards/generate.py          # (re)write outage-overview.json and traffic-slo.json
    python dashboards/generate.py --check  # exit 1 when either file is not what this would write

Panels, queries, variables and the dashboards themselves are made with the SDK's typed builders
(`grafana-foundation-sdk`, a dev dependency pinned to its build for Grafana 11.6) and serialised
by its encoder, rather than written as JSON by hand: an option a panel does not have, or a value
of the wrong kind, fails here, when the dashboards are generated, instead of being dropped
silently by Grafana on import. The one thing that build cannot say, a query variable's
`definition` (the query as Grafana's variable list shows it), is added to the encoded JSON.

Every metric an expression below names is checked, when the dashboards are built, against the
metric families of a real gateway's registry (opened in process on a scratch store, never
calling the platform) and the recording rules in deploy/prometheus/rules/: renaming a metric
fails `make lint`, not a dashboard during an outage.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import re
import string
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import structlog
import yaml
from grafana_foundation_sdk.builders import (
    common,
    dashboard,
    prometheus,
    stat,
    statetimeline,
    timeseries,
)
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_types
from grafana_foundation_sdk.models import dashboard as dashboard_types

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
ISSUING = "gateway_issuance_issuing"
ISSUANCE_FINAL = "gateway_issuance_final_total"
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
    names: set[str] = set()
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


def expressions(board: dict[str, Any]) -> list[str]:
    """Every PromQL expression of a dashboard's panels."""
    return [target["expr"] for panel in board["panels"] for target in panel["targets"]]


# -- building blocks ---------------------------------------------------------------------------

TAG = "invoice-gateway"
TENANT = 'tenant=~"$tenant"'
OPERATION = 'operation=~"$operation"'
RATE = "$__rate_interval"
GRID_COLUMNS = 24

PanelBuilder = stat.Panel | timeseries.Panel | statetimeline.Panel
AnyPanel = TypeVar("AnyPanel", stat.Panel, timeseries.Panel, statetimeline.Panel)


def datasource() -> dashboard_types.DataSourceRef:
    """The `datasource` variable: whichever Prometheus data source the importer picks."""
    return dashboard_types.DataSourceRef(type_val="prometheus", uid="${datasource}")


def query(expr: str, legend: str = "") -> prometheus.Dataquery:
    """A range query on the `datasource` variable; its refId is given by the panel."""
    return (
        prometheus.Dataquery()
        .expr(expr)
        .legend_format(legend or "__auto")
        .range()
        .datasource(datasource())
    )


def thresholds(*steps: tuple[float | None, str]) -> dashboard.ThresholdsConfig:
    """Absolute thresholds, as (from value, colour); the first from None (minus infinity)."""
    return (
        dashboard.ThresholdsConfig()
        .mode(dashboard_types.ThresholdsMode.ABSOLUTE)
        .steps([dashboard_types.Threshold(value=value, color=color) for value, color in steps])
    )


def value_mappings(texts: dict[int, tuple[str, str]]) -> list[dashboard_types.ValueMapping]:
    """Numbers shown as (text, colour)."""
    options = {
        str(value): dashboard_types.ValueMappingResult(text=text, color=color, index=index)
        for index, (value, (text, color)) in enumerate(texts.items())
    }
    return [dashboard_types.ValueMap(options=options)]


def colours(mode: dashboard_types.FieldColorModeId) -> dashboard.FieldColor:
    return dashboard.FieldColor().mode(mode)


def legend_options(*, shown: bool) -> common.VizLegendOptions:
    return (
        common.VizLegendOptions()
        .show_legend(shown)
        .display_mode(common_types.LegendDisplayMode.LIST)
        .placement(common_types.LegendPlacement.BOTTOM)
    )


def tooltip_options(
    mode: common_types.TooltipDisplayMode, sort: common_types.SortOrder
) -> common.VizTooltipOptions:
    return common.VizTooltipOptions().mode(mode).sort(sort)


def unit_property(unit: str) -> dashboard_types.DynamicConfigValue:
    return dashboard_types.DynamicConfigValue(id_val="unit", value=unit)


def with_basics(
    panel: AnyPanel,
    title: str,
    description: str,
    queries: Sequence[prometheus.Dataquery],
    *,
    width: int,
    height: int,
    unit: str,
    steps: dashboard.ThresholdsConfig | None,
    mappings: list[dashboard_types.ValueMapping] | None = None,
    no_value: str | None = None,
) -> AnyPanel:
    """What every panel here has: title, description, size, unit, thresholds (green unless
    given), value mappings, and its queries on the `datasource` variable, refIds A, B, C…"""
    panel.title(title).description(description).datasource(datasource())
    panel.span(width).height(height).unit(unit).mappings(mappings or [])
    panel.thresholds(steps or thresholds((None, "green")))
    if no_value is not None:
        panel.no_value(no_value)
    for ref, item in zip(string.ascii_uppercase, queries, strict=False):
        panel.with_target(item.ref_id(ref))
    return panel


def big_number(
    title: str,
    description: str,
    *queries: prometheus.Dataquery,
    width: int,
    height: int = 5,
    unit: str = "short",
    steps: dashboard.ThresholdsConfig | None = None,
    mappings: list[dashboard_types.ValueMapping] | None = None,
    no_value: str | None = None,
    query_units: dict[str, str] | None = None,
) -> stat.Panel:
    """A stat panel: each query's last value on a background coloured by the thresholds, named
    when there is more than one; `query_units` gives some queries (by refId) their own unit."""
    panel = with_basics(
        stat.Panel(),
        title,
        description,
        queries,
        width=width,
        height=height,
        unit=unit,
        steps=steps,
        mappings=mappings,
        no_value=no_value,
    )
    panel.color_scheme(colours(dashboard_types.FieldColorModeId.THRESHOLDS))
    panel.reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False))
    panel.color_mode(common_types.BigValueColorMode.BACKGROUND)
    panel.graph_mode(common_types.BigValueGraphMode.NONE)
    panel.justify_mode(common_types.BigValueJustifyMode.CENTER)
    panel.text_mode(
        common_types.BigValueTextMode.VALUE_AND_NAME
        if len(queries) > 1
        else common_types.BigValueTextMode.VALUE
    )
    panel.orientation(common_types.VizOrientation.AUTO)
    for ref, unit_of_query in (query_units or {}).items():
        panel.override_by_query(ref, [unit_property(unit_of_query)])
    return panel


def timeline(
    title: str,
    description: str,
    item: prometheus.Dataquery,
    *,
    mappings: list[dashboard_types.ValueMapping],
) -> statetimeline.Panel:
    """A state timeline half a row wide: one band per series, coloured by its value mapping."""
    panel = with_basics(
        statetimeline.Panel(),
        title,
        description,
        [item],
        width=12,
        height=5,
        unit="short",
        steps=None,
        mappings=mappings,
    )
    panel.color_scheme(colours(dashboard_types.FieldColorModeId.THRESHOLDS))
    panel.fill_opacity(80).line_width(0)
    panel.show_value(common_types.VisibilityMode.NEVER).merge_values(True).row_height(0.8)
    panel.align_value(common_types.TimelineValueAlignment.LEFT)
    panel.legend(legend_options(shown=False))
    panel.tooltip(
        tooltip_options(common_types.TooltipDisplayMode.SINGLE, common_types.SortOrder.NONE)
    )
    return panel


def graph(
    title: str,
    description: str,
    *queries: prometheus.Dataquery,
    width: int = 8,
    height: int = 8,
    unit: str = "short",
    minimum: float | None = 0,
    steps: dashboard.ThresholdsConfig | None = None,
    bars: bool = False,
    stacked: bool = False,
    right_axis: dict[str, str] | None = None,
) -> timeseries.Panel:
    """A time series panel in the usual shape: a third of a row, 8 high, its axis from 0, lines
    (or `bars`), thresholds drawn as lines when given; `right_axis` puts queries (by refId) on
    a right-hand axis in their own unit."""
    panel = with_basics(
        timeseries.Panel(),
        title,
        description,
        queries,
        width=width,
        height=height,
        unit=unit,
        steps=steps,
    )
    panel.color_scheme(colours(dashboard_types.FieldColorModeId.PALETTE_CLASSIC))
    if bars:
        panel.draw_style(common_types.GraphDrawStyle.BARS).fill_opacity(60)
    else:
        panel.draw_style(common_types.GraphDrawStyle.LINE).fill_opacity(10)
    panel.line_width(1).show_points(common_types.VisibilityMode.NEVER).span_nulls(False)
    panel.thresholds_style(
        common.GraphThresholdsStyleConfig().mode(
            common_types.GraphThresholdsStyleMode.LINE
            if steps is not None
            else common_types.GraphThresholdsStyleMode.OFF
        )
    )
    if stacked:
        panel.stacking(common.StackingConfig().mode(common_types.StackingMode.NORMAL))
    if minimum is not None:
        panel.min(minimum)
    panel.legend(legend_options(shown=True))
    panel.tooltip(
        tooltip_options(common_types.TooltipDisplayMode.MULTI, common_types.SortOrder.DESCENDING)
    )
    for ref, unit_of_query in (right_axis or {}).items():
        panel.override_by_query(
            ref,
            [
                dashboard_types.DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
                unit_property(unit_of_query),
            ],
        )
    return panel


def label_variable(name: str, label: str, metric: str) -> dashboard.QueryVariable:
    """A filter on `name`, its values the label's values on `metric`; "All" by default."""
    return (
        dashboard.QueryVariable(name)
        .label(label)
        .datasource(datasource())
        .query({"query": f"label_values({metric}, {name})", "refId": f"{name}-values"})
        .refresh(dashboard_types.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .include_all(True)
        .multi(True)
        .all_value(".*")
        .current(dashboard_types.VariableOption(selected=True, text=["All"], value=["$__all"]))
        .options([])
        .regex("")
        .sort(dashboard_types.VariableSort.ALPHABETICAL_ASC)
        .hide(dashboard_types.VariableHide.DONT_HIDE)
    )


def width_of(panel: PanelBuilder) -> int:
    grid = panel.build().grid_pos
    return grid.w if grid is not None else 0


def place(board: dashboard.Dashboard, rows: list[list[PanelBuilder]]) -> dashboard.Dashboard:
    """Panels row by row, left to right, on Grafana's 24-column grid; ids in order.

    The SDK puts each panel right of the one before and starts a new row once 24 columns are
    used, so each row here must fill the 24 columns exactly to be a row there.
    """
    ids = itertools.count(1)
    for row in rows:
        width = sum(width_of(panel) for panel in row)
        if width != GRID_COLUMNS:
            first = row[0].build().title
            raise ValueError(f"the row from {first!r} is {width} columns wide, not {GRID_COLUMNS}")
        for panel in row:
            board.with_panel(panel.id(next(ids)))
    return board


def exported(board: dashboard.Dashboard) -> dict[str, Any]:
    """The dashboard as Grafana's JSON model: the SDK's encoding, plus each query variable's
    `definition`, which the pinned SDK build has no field for."""
    model: dict[str, Any] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    for variable in model["templating"]["list"]:
        if variable["type"] == "query":
            variable["definition"] = variable["query"]["query"]
    return model


def gateway_dashboard(
    *,
    uid: str,
    title: str,
    description: str,
    rows: list[list[PanelBuilder]],
    time_from: str,
) -> dict[str, Any]:
    """A dashboard of the gateway's: shared crosshair, 30 s refresh, Grafana's built-in
    annotations, a link to the other gateway dashboards, and the data source, tenant and
    operation variables."""
    board = (
        dashboard.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags([TAG])
        .editable()
        .tooltip(dashboard_types.DashboardCursorSync.CROSSHAIR)
        .version(1)
        .refresh("30s")
        .time(time_from, "now")
        .timezone("")
        .week_start("")
        .fiscal_year_start_month(0)
        .live_now(False)
        .annotation(
            dashboard.AnnotationQuery()
            .name("Annotations & Alerts")
            .datasource(dashboard_types.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
            .enable(True)
            .hide(True)
            .icon_color("rgba(0, 211, 255, 1)")
            .type("dashboard")
            .built_in(1)
        )
        .link(
            dashboard.DashboardLink("Gateway dashboards")
            .type(dashboard_types.DashboardLinkType.DASHBOARDS)
            .tags([TAG])
            .as_dropdown(False)
            .include_vars(True)
            .keep_time(True)
        )
        .with_variable(
            dashboard.DatasourceVariable("datasource")
            .label("Data source")
            .type("prometheus")
            .regex("")
            .hide(dashboard_types.VariableHide.DONT_HIDE)
        )
        .with_variable(label_variable("tenant", "Tenant", REQUESTS))
        .with_variable(label_variable("operation", "Operation", REQUESTS))
    )
    return exported(place(board, rows))


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


def quantiles(metric: str, selector: str, by: str, legend: str) -> list[prometheus.Dataquery]:
    group = f"{by}, le" if by else "le"
    return [
        query(
            f"histogram_quantile({q}, sum by ({group}) (rate({metric}{{{selector}}}[{RATE}])))",
            f"p{round(q * 100)}{legend}",
        )
        for q in (0.5, 0.95, 0.99)
    ]


CIRCUIT_CODES = {"closed": 0, "half_open": 1, "open": 2, "forced_open": 3, "forced_closed": 4}
CIRCUIT_TEXTS = {
    0: ("closed", "green"),
    1: ("half-open", "yellow"),
    2: ("open", "red"),
    3: ("forced open", "purple"),
    4: ("forced closed", "blue"),
}
HEALTH_CODES = {"unknown": 0, "up": 1, "down": 2}
HEALTH_TEXTS = {0: ("unknown (no probe)", "text"), 1: ("up", "green"), 2: ("down", "red")}


# -- the outage overview -------------------------------------------------------------------------


def outage_overview() -> dict[str, Any]:
    """Is the platform down, since when, how much is queued, how fast is it draining, when will
    it be empty, is anything dead: one screen."""
    stats: list[PanelBuilder] = [
        big_number(
            "Platform",
            "Down while the active probe says so or a circuit breaker is open or half-open.",
            query(PLATFORM_DOWN_RAW, "platform"),
            width=4,
            mappings=value_mappings({0: ("UP", "green"), 1: ("DOWN", "red")}),
            steps=thresholds((None, "green"), (1, "red")),
            no_value="no data",
        ),
        big_number(
            "Down for",
            "Time since the gateway last saw the platform up (recording rule "
            f"{PLATFORM_UP_AT}); empty while it is up.",
            query(
                f"(time() - max(max_over_time({PLATFORM_UP_AT}[7d])))"
                f" and on () (max({PLATFORM_DOWN}) == 1)",
                "down for",
            ),
            width=4,
            unit="s",
            steps=thresholds((None, "orange"), (900, "red")),
            no_value="—",
        ),
        big_number(
            "Queued",
            "Submissions waiting for delivery (queued and being delivered).",
            query(BACKLOG, "queued"),
            width=3,
            steps=thresholds((None, "green"), (1, "orange")),
        ),
        big_number(
            "Draining at",
            "Submissions leaving the outbox per second over the last 5 minutes.",
            query(drained("5m"), "drained"),
            width=3,
            unit="ops",
            steps=thresholds((None, "blue")),
        ),
        big_number(
            "Empty in",
            "Queued ÷ drain rate: when the backlog will be gone at the current pace. Empty "
            "while nothing drains (the platform is down, or the dispatcher paused).",
            query(f"{BACKLOG} / ({drained('5m')} > 0)", "ETA"),
            width=4,
            unit="s",
            steps=thresholds((None, "green"), (600, "orange"), (DEADLINE_SECONDS, "red")),
            no_value="not draining",
        ),
        big_number(
            "Oldest queued",
            f"Age of the oldest queued submission; the deadline alert is at {DEADLINE_SECONDS}s.",
            query(f"max({OLDEST_QUEUED})", "oldest"),
            width=3,
            unit="s",
            steps=thresholds((None, "green"), (300, "orange"), (DEADLINE_SECONDS, "red")),
        ),
        big_number(
            "Dead",
            "Submissions that ran out of attempts or age: on-call must replay or discard them.",
            query(f'max({OUTBOX}{{state="dead"}})', "dead"),
            width=3,
            steps=thresholds((None, "green"), (1, "red")),
        ),
    ]
    timelines: list[PanelBuilder] = [
        timeline(
            "Circuit state",
            "Each circuit breaker's state over time.",
            query(state_code(CIRCUIT_STATE, "state", CIRCUIT_CODES, "breaker"), "{{breaker}}"),
            mappings=value_mappings(CIRCUIT_TEXTS),
        ),
        timeline(
            "Platform health (active probe)",
            "What the active health probe concludes, per gateway instance.",
            query(state_code(UPSTREAM_HEALTH, "status", HEALTH_CODES, "instance"), "{{instance}}"),
            mappings=value_mappings(HEALTH_TEXTS),
        ),
    ]
    upstream: list[PanelBuilder] = [
        graph(
            "Upstream error ratio by class",
            "Share of calls to the platform that failed, by failure class.",
            query(
                f'sum by (result) (rate({UPSTREAM_ATTEMPTS}{{result!="success", {OPERATION}}}'
                f"[{RATE}])) / ignoring (result) group_left"
                f" sum(rate({UPSTREAM_ATTEMPTS}{{{OPERATION}}}[{RATE}]))",
                "{{result}}",
            ),
            width=12,
            unit="percentunit",
            bars=True,
            stacked=True,
        ),
        graph(
            "Upstream latency",
            "Duration of calls to the platform: p50, p95, p99.",
            *quantiles(UPSTREAM_DURATION, OPERATION, "", ""),
            width=12,
            unit="s",
        ),
    ]
    outbox: list[PanelBuilder] = [
        graph(
            "Queued vs drained",
            "Submissions in the outbox by state (left) against submissions queued and drained "
            "per second (right).",
            query(f'max by (state) ({OUTBOX}{{state=~"queued|delivering|unknown"}})', "{{state}}"),
            query(f"sum(rate({ENQUEUED}{{{TENANT}, {OPERATION}}}[{RATE}]))", "queued per second"),
            query(drained(RATE), "drained per second"),
            width=12,
            right_axis={"B": "ops", "C": "ops"},
        ),
        graph(
            "Oldest queued",
            "Age of the oldest queued submission; the line is the business deadline.",
            query(f"max({OLDEST_QUEUED})", "oldest queued"),
            width=6,
            unit="s",
            steps=thresholds((None, "green"), (DEADLINE_SECONDS, "red")),
        ),
        graph(
            "ETA to empty",
            "Queued ÷ drain rate over 5 minutes; gaps while nothing drains.",
            query(f"{BACKLOG} / ({drained('5m')} > 0)", "time to empty"),
            width=6,
            unit="s",
        ),
    ]
    details: list[PanelBuilder] = [
        graph(
            "Client answers by outcome",
            "What clients got: forwarded (the platform answered), queued (202), replayed "
            "(same key), rejected (the gateway answered itself).",
            query(
                f"sum by (outcome) (rate({REQUESTS}{{{TENANT}, {OPERATION}}}[{RATE}]))",
                "{{outcome}}",
            ),
            unit="reqps",
        ),
        graph(
            "Dead and parked",
            "Dead submissions in the outbox (left); submissions dying or parked for on-call "
            "per second (right).",
            query(f'max({OUTBOX}{{state="dead"}})', "dead in the outbox"),
            query(f"sum(rate({DEAD}[{RATE}]))", "dying per second"),
            query(f"sum(rate({PARKED}[{RATE}]))", "parked per second"),
            right_axis={"B": "ops", "C": "ops"},
        ),
        graph(
            "Dispatcher",
            "Deliveries in flight, and 1 while on-call has paused the dispatcher.",
            query(f"sum({DISPATCHER_IN_FLIGHT})", "in flight"),
            query(f"max({DISPATCHER_PAUSED})", "paused"),
            query(f"sum(rate({REQUEUED}[{RATE}]))", "put back per second"),
        ),
        graph(
            "Platform business codes",
            "Business codes in the platform's answers (070601: signature rejected, 070301: "
            "token rejected, 040102: busy).",
            query(f"sum by (code) (rate({BUSINESS_CODES}{{{OPERATION}}}[{RATE}]))", "{{code}}"),
            unit="ops",
        ),
        graph(
            "Circuit transitions",
            "Circuit breaker state changes, by the state entered.",
            query(
                f"sum by (breaker, to) (increase({CIRCUIT_TRANSITIONS}[{RATE}]))",
                "{{breaker}} → {{to}}",
            ),
            bars=True,
        ),
        graph(
            "Access token",
            "Token requests to the platform by result (left), age of the token in use (right).",
            query(f"sum by (result) (increase({TOKEN_REFRESHES}[{RATE}]))", "{{result}}"),
            query(f"max({TOKEN_AGE})", "token age"),
            right_axis={"B": "s"},
        ),
    ]
    issuance: list[PanelBuilder] = [
        graph(
            "Issuance after acceptance",
            "Accepted invoices the platform is still issuing (left), and how issuance ended "
            "per second: done, failed (22), signing failed (24), cancelled, given up (right). "
            "Failed ones are issue_failed in the outbox: see the runbook.",
            query(f"sum({ISSUING}{{{OPERATION}}})", "still issuing"),
            query(
                f"sum by (outcome) (rate({ISSUANCE_FINAL}{{{OPERATION}}}[{RATE}]))",
                "{{outcome}}",
            ),
            width=24,
            right_axis={"B": "ops"},
        ),
    ]
    return gateway_dashboard(
        uid="invoice-gateway-outage",
        title="Invoice gateway — outage overview",
        description="Is the platform down, since when, how much is queued, how fast is it "
        "draining, when will it be empty, is anything dead. Generated by dashboards/generate.py.",
        rows=[stats, timelines, upstream, outbox, details[:3], details[3:], issuance],
        time_from="now-3h",
    )


# -- traffic and SLO -----------------------------------------------------------------------------


def traffic_slo() -> dict[str, Any]:
    """RED per operation, acceptance availability against its SLO, error-budget burn."""
    availability: list[PanelBuilder] = [
        big_number(
            f"Acceptance availability ({window})",
            f"Submissions answered 2xx (forwarded, queued or replayed) over all submissions "
            f"but the client's own 4xx, over {window}. SLO {SLO_OBJECTIVE:.1%}.",
            query(f"1 - max({acceptance_errors(window)})", "availability"),
            width=4,
            unit="percentunit",
            steps=thresholds((None, "red"), (SLO_OBJECTIVE, "green")),
        )
        for window, _ in BURN_WINDOWS
    ]
    burn_stats: list[PanelBuilder] = [
        big_number(
            f"Budget burn rate ({window})",
            f"Error ratio over {window} ÷ error budget ({ERROR_BUDGET}). 1 spends the budget in "
            f"exactly 30 days; the {window} alert is at {rate:g}.",
            query(f"max({acceptance_errors(window)}) / {ERROR_BUDGET}", "burn rate"),
            width=4,
            unit="x",
            steps=thresholds((None, "green"), (1, "orange"), (rate, "red")),
        )
        for window, rate in BURN_WINDOWS
    ]
    slo: list[PanelBuilder] = [
        graph(
            "Acceptance availability",
            f"Over 5 minutes and 1 hour; the line is the SLO ({SLO_OBJECTIVE:.1%}).",
            query(f"1 - max({acceptance_errors('5m')})", "5m"),
            query(f"1 - max({acceptance_errors('1h')})", "1h"),
            width=12,
            unit="percentunit",
            steps=thresholds((None, "red"), (SLO_OBJECTIVE, "green")),
            minimum=None,
        ),
        graph(
            "Error-budget burn rate",
            "Each window's error ratio ÷ the error budget; alerts page at 14.4 (1h and 5m) and "
            "6 (6h and 30m), and open a ticket at 1 (3d and 6h).",
            *(
                query(f"max({acceptance_errors(window)}) / {ERROR_BUDGET}", window)
                for window in ("5m", "30m", "1h", "6h", "3d")
            ),
            width=12,
            unit="x",
            steps=thresholds((None, "green"), (1, "orange"), (6, "red"), (14.4, "dark-red")),
        ),
    ]
    selector = f"{TENANT}, {OPERATION}"
    red: list[PanelBuilder] = [
        graph(
            "Rate by operation",
            "Client requests per second.",
            query(f"sum by (operation) (rate({REQUESTS}{{{selector}}}[{RATE}]))", "{{operation}}"),
            unit="reqps",
        ),
        graph(
            "Errors by operation and class",
            "Client requests that did not end in success, per second, by error class.",
            query(
                f"sum by (operation, error_class) (rate({REQUEST_ERRORS}{{{OPERATION}}}[{RATE}]))",
                "{{operation}} {{error_class}}",
            ),
            unit="reqps",
        ),
        graph(
            "5xx ratio by operation",
            "Share of client requests answered 5xx.",
            query(
                f'sum by (operation) (rate({REQUESTS}{{status_class="5xx", {selector}}}'
                f"[{RATE}])) / sum by (operation) (rate({REQUESTS}{{{selector}}}[{RATE}]))",
                "{{operation}}",
            ),
            unit="percentunit",
        ),
    ]
    duration: list[PanelBuilder] = [
        graph(
            "Duration by operation",
            "Time to answer a client: p50, p95, p99 per operation (buckets sit at the SLO "
            "thresholds 10 ms, 250 ms, 1 s, 10 s).",
            *quantiles(REQUEST_DURATION, OPERATION, "operation", " {{operation}}"),
            width=12,
            unit="s",
        ),
        graph(
            "Answers by outcome and status",
            "What clients got, per second.",
            query(
                f"sum by (outcome, status_class) (rate({REQUESTS}{{{selector}}}[{RATE}]))",
                "{{outcome}} {{status_class}}",
            ),
            width=12,
            unit="reqps",
        ),
    ]
    resilience: list[PanelBuilder] = [
        graph(
            "Retries and budget rejections",
            "Retries within client requests per second, and retries the retry budget refused.",
            query(f"sum by (operation) (rate({RETRIES}{{{OPERATION}}}[{RATE}]))", "{{operation}}"),
            query(f"sum(rate({RETRY_BUDGET_REJECTIONS}[{RATE}]))", "refused by the budget"),
            unit="ops",
        ),
        graph(
            "Idempotent replays",
            "Requests answered from a stored result (the same key sent again).",
            query(f"sum by (operation) (rate({REPLAYS}{{{OPERATION}}}[{RATE}]))", "{{operation}}"),
            unit="reqps",
        ),
        graph(
            "In flight",
            "Client requests being served, and deliveries the dispatcher has in flight.",
            query(f"sum({IN_FLIGHT})", "client requests"),
            query(f"sum({DISPATCHER_IN_FLIGHT})", "deliveries"),
        ),
    ]
    store: list[PanelBuilder] = [
        graph(
            "Store commit latency",
            "One group commit (transaction plus fsync): p50 and p99. Every 202 waits for one.",
            *(
                query(
                    f"histogram_quantile({q}, sum by (le) (rate({COMMIT_DURATION}[{RATE}])))",
                    f"p{round(q * 100)}",
                )
                for q in (0.5, 0.99)
            ),
            unit="s",
        ),
        graph(
            "Writes per commit",
            "How many writes shared one commit (group commit): p50 and p99.",
            *(
                query(
                    f"histogram_quantile({q}, sum by (le) (rate({COMMIT_BATCH}[{RATE}])))",
                    f"p{round(q * 100)}",
                )
                for q in (0.5, 0.99)
            ),
        ),
        big_number(
            "Builds running",
            "Gateway instances by version, and the shortest uptime.",
            query(f"count by (version, python) ({BUILD_INFO})", "{{version}} (Python {{python}})"),
            query(f"min(time() - {START_TIME})", "shortest uptime"),
            width=8,
            height=8,
            steps=thresholds((None, "blue")),
            query_units={"B": "s"},
        ),
    ]
    return gateway_dashboard(
        uid="invoice-gateway-traffic-slo",
        title="Invoice gateway — traffic and SLO",
        description="RED per operation, acceptance availability against its SLO, error-budget "
        "burn. Generated by dashboards/generate.py.",
        rows=[availability + burn_stats, slo, red, duration, resilience, store],
        time_from="now-24h",
    )


# -- writing -----------------------------------------------------------------------------------

#: Each file, and what builds its JSON model.
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
