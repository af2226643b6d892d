"""A real Prometheus (Debian's `prometheus`) scraping a real gateway's admin /metrics through a
scenario driven by the simulator: healthy traffic, a token the platform revokes while its token
endpoint is busy, a wrong app secret rolled out and back (signature errors), a 10-second outage,
recovery. Then, through Prometheus' HTTP API:

- every expression of every dashboard panel, and every rule's expression, is valid PromQL;
- each of them returns data for the scenario — for an alert, each side of its comparisons (an
  alert's own expression is empty unless it fires); for a recording rule, its recorded series;
- the dashboards' `label_values` variables find values;
- the platform-down alert's expression is true during the outage (and the loaded alert is
  pending) and false after recovery.

Everything is bounded in time (about 40 s in all), on 127.0.0.1 and free ports only.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from dashboards.generate import OUTPUTS, expressions, metric_names
from tests.integration.test_core_gateway import ISSUE, QUERY, invoice
from tests.integration.test_merchant_tokens import ENV, merchant
from tests.observability.conftest import PROMETHEUS_DIR, RULE_FILES
from tests.support.harness import FAST_OUTBOX, Gateway, Simulator
from tests.support.processes import ManagedProcess, base_env, free_port, http_json, wait_until

pytestmark = pytest.mark.integration

FAST_BACKOFF = {"base": "20ms", "cap": "100ms"}
OVERRIDES = {
    "outbox": FAST_OUTBOX,
    "resilience": {
        "defaults": {
            "read": {"deadline": "2s", "attempts": 2, "backoff": FAST_BACKOFF},
            "submit": {"deadline": "2s", "attempts": 2, "backoff": FAST_BACKOFF},
        },
        "breaker": {"failure_threshold": 3, "reset_timeout": "1s"},
        "probe": {
            "operation": QUERY,
            "body": {"orderNos": ["gateway-health-probe"]},
            "interval": "300ms",
            "timeout": "1s",
            "healthy_threshold": 2,
            "unhealthy_threshold": 2,
        },
    },
    "upstream.timeout": "2s",
    # A rejected token may be renewed again after 1 s, so the token phase lasts seconds.
    "upstream.auth.min_refresh_interval": "1s",
}
#: One merchant tenant's secrets (its authorization code is the simulator's).
MERCHANT_ENV = {key: value for key, value in ENV.items() if key.startswith("SHOP_A_")}
#: Grafana's variables, as the dashboards would be viewed with "All" selected.
VARIABLES = {"__rate_interval": "15s", "tenant": ".*", "operation": ".*"}
OUTAGE_SECONDS = 10.0


# -- Prometheus ---------------------------------------------------------------------------------


@dataclass
class Prometheus:
    process: ManagedProcess
    url: str

    @classmethod
    def start(
        cls,
        workdir: Path,
        targets: list[str],
        *,
        rule_files: list[Path] | None = None,
        alertmanagers: Sequence[str] = (),
    ) -> Prometheus:
        """The example config (deploy/prometheus/prometheus.yml) with 1 s intervals, this
        repository's rule files (or `rule_files`), `targets` and `alertmanagers`
        (host:port), on a fresh TSDB in `workdir`."""
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus is missing: run `bash scripts/bootstrap-system.sh` as root")
        config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        config["rule_files"] = [str(path) for path in (rule_files or RULE_FILES)]
        if alertmanagers:
            config["alerting"] = {
                "alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]
            }
        [job] = config["scrape_configs"]
        job["static_configs"] = [{"targets": targets}]
        workdir.mkdir(parents=True, exist_ok=True)
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        port = free_port()
        process = ManagedProcess(
            "prometheus",
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            base_env(),
            workdir,
        ).start()
        prometheus = cls(process, f"http://127.0.0.1:{port}")
        process.wait_ready(f"{prometheus.url}/-/ready")
        return prometheus

    def api(self, path: str, **params: str) -> Any:
        """`/api/v1/<path>`'s `data`; fails the test on an error, with Prometheus' message."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        status, _, body = http_json("GET", url, timeout=10.0)
        assert isinstance(body, dict), f"{url}: HTTP {status} {body!r}"
        assert "success" == body.get("status"), f"{params}: {body.get('error')}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(self.api("query", query=expr)["result"])

    def query_range(self, expr: str, start: float, end: float) -> list[dict[str, Any]]:
        data = self.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step="1")
        return list(data["result"])


# -- traffic ------------------------------------------------------------------------------------


@dataclass
class Traffic:
    """Submissions (some sent twice: replays) and reads through the gateway, about 20 a second,
    on a thread, until stopped. Refused connections (during a restart) are counted, not raised."""

    gateway: Gateway
    outcomes: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Traffic:
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        sent = 0
        last: dict[str, Any] | None = None
        while not self._stop.wait(0.05):
            sent += 1
            if sent % 2:
                body = last if last is not None and sent % 7 == 0 else invoice()
                last = body
                self._send(ISSUE, body)
            else:
                self._send(QUERY, {"orderNos": ["traffic"]})

    def _send(self, operation: str, body: dict[str, Any]) -> None:
        try:
            status, headers, _ = self.gateway.call(operation, body)
        except OSError as exc:
            self.outcomes[f"error {type(exc).__name__}"] += 1
        else:
            self.outcomes[f"{status} {headers.get('X-Gateway-Outcome', '-')}"] += 1


# -- the expressions ----------------------------------------------------------------------------


def substitute(expr: str) -> str:
    """A dashboard expression with Grafana's variables filled in."""
    return re.sub(r"\$\{?(\w+)\}?", lambda m: VARIABLES[m.group(1)], expr)


_SET_OPERATOR = re.compile(r"\b(?:and|or|unless)\b")
_COMPARISON = re.compile(r"==|!=|>=|<=|>|<")
_MODIFIER = re.compile(r"^\s*(?:bool\s+)?(?:(?:on|ignoring)\s*\([^()]*\)\s*)?")


def top_level_split(expr: str, operator: re.Pattern[str]) -> list[str]:
    """`expr` split at `operator` where it is outside any (), [] or {}."""
    parts, depth, start, position = [], 0, 0, 0
    while position < len(expr):
        char = expr[position]
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == '"':  # skip the string, escapes and all
            position += 1
            while expr[position] != '"':
                position += 2 if expr[position] == "\\" else 1
        elif depth == 0 and (match := operator.match(expr, position)):
            parts.append(expr[start:position])
            start = position = match.end()
            continue
        position += 1
    parts.append(expr[start:])
    return [_MODIFIER.sub("", part).strip() for part in parts]


def operands(expr: str) -> list[str]:
    """The sides of an alert expression's set operators and comparisons that select metrics:
    `a > 1 and b > 2 unless on (x) c == 1` gives a, b and c."""
    return [
        side
        for part in top_level_split(expr, _SET_OPERATOR)
        for side in top_level_split(part, _COMPARISON)
        if metric_names(side)
    ]


def test_operands_split_alert_expressions() -> None:
    """The operand splitter keeps label matchers and parentheses whole and drops thresholds and
    modifiers."""
    expr = (
        'increase(x{result="failure", a!="b"}[5m]) > 0\n'
        'unless on (job, instance) y{s=~"a|b"} == bool 1 and (z > (14.4 * 0.001))'
    )
    assert [
        'increase(x{result="failure", a!="b"}[5m])',
        'y{s=~"a|b"}',
        "(z > (14.4 * 0.001))",
    ] == operands(expr)


def dashboard_queries() -> dict[str, str]:
    """Every dashboard expression (variables filled in), named by where it is."""
    queries = {}
    for name, build in OUTPUTS.items():
        for index, expr in enumerate(expressions(build())):
            queries[f"{name} #{index}"] = substitute(expr)
    return queries


def rule_queries() -> tuple[dict[str, str], dict[str, str]]:
    """(every rule's own expression, what must have data for it), by rule name: a recording
    rule's recorded series; each operand of an alert's comparisons."""
    whole, with_data = {}, {}
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                name = rule.get("alert") or rule["record"]
                whole[name] = rule["expr"]
                if "record" in rule:
                    with_data[name] = rule["record"]
                for index, side in enumerate(operands(rule["expr"]) if "alert" in rule else []):
                    with_data[f"{name} operand {index}"] = side
    return whole, with_data


# -- the scenario -------------------------------------------------------------------------------


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[Simulator]:
    """The platform, with one merchant's authorization code (the per-tenant token rules need
    a merchant tenant to have data)."""
    isv_code = ["--isv-code", f"{MERCHANT_ENV['SHOP_A_CODE']}={MERCHANT_ENV['SHOP_A_TAX']}"]
    with Simulator.start(tmp_path / "sim", "--issue-delay", "0.2", *isv_code) as sim:
        yield sim


@pytest.fixture
def gateway(tmp_path: Path, simulator: Simulator) -> Iterator[Gateway]:
    """The app's own tenant and a merchant tenant with its own token."""
    tenants = [
        {"id": "demo", "api_key": {"env": "GATEWAY_DEMO_API_KEY"}},
        merchant("shop-a", "SHOP_A"),
    ]
    overrides = {**OVERRIDES, "tenants": tenants}
    with Gateway.start(tmp_path / "gw", simulator.url, overrides=overrides, env=MERCHANT_ENV) as gw:
        yield gw


@pytest.fixture
def prometheus(tmp_path: Path, gateway: Gateway) -> Iterator[Prometheus]:
    status, _, text = http_json("GET", f"{gateway.admin_url}/metrics")
    if status != 200 or "gateway_requests_total" not in str(text):
        pytest.fail(f"GET {gateway.admin_url}/metrics answered {status}: {str(text)[:300]}")
    target = gateway.admin_url.removeprefix("http://")
    prom = Prometheus.start(tmp_path / "prometheus", [target])
    try:
        yield prom
    finally:
        prom.process.stop()


def test_outage_through_a_real_prometheus(
    gateway: Gateway, simulator: Simulator, prometheus: Prometheus
) -> None:
    """Dashboards and rules hold against real data; the outage alert tracks the outage."""
    started = time.time()
    wait_until(
        lambda: prometheus.query('up{job="invoice-gateway"} == 1'),
        timeout=15,
        interval=0.25,
        what="Prometheus to scrape the gateway",
    )
    secret = gateway.env["NUONUO_APP_SECRET"]

    def seen(expr: str, what: str, timeout: float = 15) -> None:
        """Wait until Prometheus has scraped and evaluated what the phase was meant to cause."""
        wait_until(lambda: prometheus.query(expr), timeout=timeout, interval=0.25, what=what)

    with Traffic(gateway) as traffic:
        seen('sum(gateway_requests_total{outcome="forwarded"}) > 20', "healthy traffic")

        # The platform revokes every token while its token endpoint is busy for two calls:
        # two failed renewals, then a good one.
        simulator.fault(kind="busy", operations=["accessToken"], count=2)
        simulator.fault(kind="token_expiry")
        seen(
            'count_over_time(gateway_token_refreshes_total{result="failure"}[1m]) >= 3 and '
            'gateway_token_refreshes_total{result="failure"} >= 1',
            "failed token renewals over several scrapes",
        )

        # A wrong app secret is rolled out, then rolled back: signature errors (070601).
        gateway.env["NUONUO_APP_SECRET"] = "not-the-app-secret"
        gateway.restart()
        # Several scrapes of the errors, so `increase()` over them has data.
        seen(
            'count_over_time(gateway_upstream_business_codes_total{code="070601"}[1m]) >= 3',
            "signature errors over several scrapes",
        )
        gateway.env["NUONUO_APP_SECRET"] = secret
        gateway.restart()
        seen(
            'sum(gateway_upstream_attempts_total{result="success"}) > 5',
            "successful calls with the right secret again",
        )

        # The lookup API is switched off for the app (070302): a configuration problem.
        simulator.change_settings(disabled_apis=[QUERY])
        seen(
            "count_over_time(gateway_upstream_configuration_errors_total[1m]) >= 3",
            "configuration errors over several scrapes",
        )
        simulator.change_settings(disabled_apis=[])

        # The outage: every call to the platform answered 503.
        simulator.clear_faults()
        outage_started = time.time()
        simulator.fault(kind="http_error", status=503)
        wait_until(
            lambda: prometheus.query("gateway:platform_down == 1"),
            timeout=OUTAGE_SECONDS,
            interval=0.25,
            what="Prometheus to see the platform down",
        )
        alert = 'ALERTS{alertname="GatewayPlatformDown", alertstate="pending"}'
        wait_until(
            lambda: prometheus.query(alert),
            timeout=5,
            interval=0.25,
            what="GatewayPlatformDown to be pending",
        )
        # The outage lasts its planned length (the scenario's window, not a wait for a result).
        time.sleep(max(0.0, outage_started + OUTAGE_SECONDS - time.time()))
        outage_ended = time.time()
        simulator.clear_faults()

        wait_until(
            lambda: prometheus.query("gateway:platform_down == 0"),
            timeout=15,
            interval=0.25,
            what="Prometheus to see the platform up again",
        )
        wait_until(
            lambda: prometheus.query('max(gateway_outbox_submissions{state="queued"}) == 0'),
            timeout=20,
            interval=0.25,
            what="the backlog to drain",
        )
    stopped = time.time()
    seen(f'timestamp(up{{job="invoice-gateway"}}) > {stopped:.3f}', "a scrape after the traffic")
    seen(f"timestamp(gateway:platform_down) > {stopped:.3f}", "a rule evaluation after the traffic")
    ended = time.time()
    print(f"traffic: {dict(traffic.outcomes)}; scenario took {ended - started:.1f}s")
    assert traffic.outcomes["202 queued"] > 0, traffic.outcomes

    # Valid PromQL with data, for every dashboard panel and every rule.
    failures = []
    whole, with_data = rule_queries()
    for expr in {**dashboard_queries(), **whole}.values():
        prometheus.query_range(expr, started, ended)  # fails the test on invalid PromQL
    for name, expr in {**dashboard_queries(), **with_data}.items():
        if not prometheus.query_range(expr, started, ended):
            failures.append(f"{name}: no data for {expr}")
    for board in OUTPUTS.values():
        for variable in board()["templating"]["list"]:
            if variable["type"] != "query":
                continue
            metric, label = re.findall(r"label_values\((\w+), (\w+)\)", variable["definition"])[0]
            if not prometheus.api(f"label/{label}/values", **{"match[]": metric}):
                failures.append(f"variable {variable['name']}: no values")
    assert [] == failures, "\n".join(failures)

    # The platform-down alert: its expression true during the outage, false after.
    platform_down = whole["GatewayPlatformDown"]
    during = prometheus.query_range(platform_down, outage_started, outage_ended)
    assert during, f"{platform_down!r} was never true during the outage"
    assert [] == prometheus.query(platform_down), "still down after recovery"
    assert [] == prometheus.query('ALERTS{alertname="GatewayPlatformDown"}'), (
        "the alert is still pending or firing after recovery"
    )
    # Nothing else claims the platform is down now.
    assert [] == prometheus.query("gateway:platform_down == 1")
