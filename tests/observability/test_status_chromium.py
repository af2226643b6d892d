"""`/status` as a person sees it: a real gateway and simulator through an outage, and markup
typed by on-call, the page opened in headless Chromium (Debian's `chromium`, driven by
Playwright; never a downloaded browser).

Screenshots are saved under `test-artifacts/` (git-ignored) for a human to look at.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

from tests.integration.test_core_gateway import ISSUE, invoice
from tests.integration.test_oncall_cli import cli
from tests.support.harness import FAST_OUTBOX, Gateway, Simulator
from tests.support.processes import ROOT, TENANT_KEY, USER_TAX, http_json, wait_until

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "test-artifacts"
OVERRIDES = {
    "outbox": FAST_OUTBOX,
    "resilience": {
        "defaults": {
            "submit": {"deadline": "2s", "attempts": 2, "backoff": {"base": "20ms", "cap": "100ms"}}
        },
        "breaker": {"failure_threshold": 3, "reset_timeout": "2s"},
    },
    "upstream.timeout": "2s",
}
QUEUED = 8
OPERATOR_TOKEN = "status-operator-token-0123456789"
ADMIN = {
    "admin.tokens": [
        {"name": "oncall-alice", "role": "operator", "token": {"env": "STATUS_ADMIN_OPERATOR"}}
    ]
}
HOSTILE = "<script>document.title='owned'</script><b>bold</b>"
#: The incident line as on-call would type it, with markup a browser must show as text.
INCIDENT = f"开票平台故障，发票将在恢复后自动开具 {HOSTILE}"


@pytest.fixture
def browser_page() -> Iterator[Page]:
    """A Chromium page in a fresh profile, with JavaScript off: the page must not need it."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `bash scripts/bootstrap-system.sh` as root")
    with (
        tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile,
        sync_playwright() as playwright,
    ):
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            java_script_enabled=False,
            viewport={"width": 1000, "height": 900},
        )
        try:
            yield context.new_page()
        finally:
            context.close()


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[Simulator]:
    with Simulator.start(tmp_path / "sim") as sim:
        yield sim


@pytest.fixture
def gateway(tmp_path: Path, simulator: Simulator) -> Iterator[Gateway]:
    with Gateway.start(tmp_path / "gw", simulator.url, overrides=OVERRIDES) as gw:
        yield gw


@pytest.fixture
def operated_gateway(tmp_path: Path, simulator: Simulator) -> Iterator[Gateway]:
    """A gateway with an on-call operator who may force the circuit."""
    with Gateway.start(
        tmp_path / "gw",
        simulator.url,
        overrides={**OVERRIDES, **ADMIN},
        env={"STATUS_ADMIN_OPERATOR": OPERATOR_TOKEN},
    ) as gw:
        yield gw


def waiting(gw: Gateway) -> int:
    status, _, facts = http_json("GET", gw.url + "/status?format=json")
    assert 200 == status, facts
    return int(facts["outbox"]["waiting"])


def test_status_page_in_chromium_through_an_outage(
    browser_page: Page, gateway: Gateway, simulator: Simulator
) -> None:
    """During an outage a person sees: the platform is down and submissions are queued, how many,
    the circuit in words, the failures in plain words and the charts; after recovery, that it is
    up again with the outage in the charts. The page loads nothing from anywhere else."""
    page = browser_page
    for _ in range(3):
        assert 200 == gateway.call(ISSUE, invoice())[0]
    simulator.fault(kind="http_error", status=503)
    for _ in range(QUEUED):
        status, _, answer = gateway.call(ISSUE, invoice())
        assert 202 == status, answer

    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    response = page.goto(gateway.url + "/status")
    assert response is not None
    assert 200 == response.status

    headline = page.locator("h1").inner_text()
    assert "Platform down" in headline
    assert "submissions are being queued" in headline
    assert re.match(r"Down since \d\d:\d\d:\d\d UTC", page.locator(".since").inner_text())
    queued_tile = page.locator(".tile", has_text=re.compile("^Queued"))
    assert str(QUEUED) == queued_tile.locator("b").inner_text()
    circuit = page.locator("h2:text-is('Circuit') + table").inner_text()
    assert re.search(
        r"open — failing fast, submissions are queued|half-open — trying one call", circuit
    )
    assert page.get_by_text("platform server error").is_visible()
    charts = page.locator("svg")
    assert 2 == charts.count()
    for i in range(2):
        box = charts.nth(i).bounding_box()
        assert box is not None
        assert box["width"] > 300
        assert box["height"] > 60
    assert 1 <= page.locator("svg rect[fill='#e09b00']").count()  # a queued bar
    assert 1 <= page.locator("svg title", has_text="platform down").count()
    assert 1 == page.locator("meta[http-equiv='refresh']").count()
    body = page.content()
    assert TENANT_KEY not in body
    assert USER_TAX not in body
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "status-outage.png"), full_page=True)

    simulator.clear_faults()
    wait_until(lambda: waiting(gateway) == 0, timeout=40, interval=0.3, what="the queue to drain")
    page.reload()
    assert "Platform up" == page.locator("h1").inner_text()
    assert re.match(r"Up since \d\d:\d\d:\d\d UTC", page.locator(".since").inner_text())
    assert (
        str(QUEUED + 3)
        == page.locator(".tile", has_text=re.compile("^Delivered")).locator("b").inner_text()
    )
    assert 1 <= page.locator("svg title", has_text="platform down").count()  # the outage, shaded
    page.screenshot(path=str(ARTIFACTS / "status-recovered.png"), full_page=True)

    assert requested
    assert all(url.startswith(gateway.url + "/") for url in requested), requested


def test_markup_typed_by_on_call_is_shown_as_text(
    browser_page: Page, operated_gateway: Gateway
) -> None:
    """A reason for forcing the circuit open that carries markup reaches the page as text: the
    browser builds no script or bold element from it and shows the characters as typed."""
    page = browser_page
    status, _, answer = operated_gateway.admin(
        "POST", "/circuit/open", {"reason": HOSTILE}, token=OPERATOR_TOKEN
    )
    assert 200 == status, answer
    response = page.goto(operated_gateway.url + "/status")
    assert response is not None
    assert 200 == response.status
    assert "Sending held by on-call" in page.locator("h1").inner_text()
    circuit = page.locator("h2:text-is('Circuit') + table").inner_text()
    assert f"oncall-alice: {HOSTILE}" in circuit
    assert (0, 0) == (page.locator("script").count(), page.locator("td b").count())


def oncall(gw: Gateway, *args: str) -> subprocess.CompletedProcess[str]:
    """`invoice-gateway ARGS…` against `gw`'s admin API with the operator's token."""
    return cli(gw, *args, token=OPERATOR_TOKEN)


def test_incident_line_set_with_the_cli_is_shown_in_chromium_and_cleared(
    browser_page: Page, operated_gateway: Gateway
) -> None:
    """`invoice-gateway status set` puts the line at the top of the page: the Chinese intact,
    the markup in it shown as text, when and by whom it was set; `status clear` removes it."""
    page = browser_page
    result = oncall(
        operated_gateway, "status", "set", INCIDENT, "--reason", "platform down", "--json"
    )
    assert 0 == result.returncode, result.stderr
    assert INCIDENT == json.loads(result.stdout)["incident"]["message"]
    response = page.goto(operated_gateway.url + "/status")
    assert response is not None
    assert 200 == response.status
    notice = page.locator(".incident")
    assert INCIDENT == notice.locator("p").inner_text()
    assert re.fullmatch(
        r"Notice set at \d\d:\d\d:\d\d UTC by oncall-alice", notice.locator("small").inner_text()
    )
    assert (0, 0) == (page.locator("script").count(), page.locator(".incident b").count())
    assert "owned" != page.title()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "status-incident.png"), full_page=True)

    result = oncall(operated_gateway, "status", "clear", "--reason", "platform back")
    assert 0 == result.returncode, result.stderr
    page.reload()
    assert 0 == page.locator(".incident").count()
    assert "开票平台故障" not in page.content()
