"""Shared by the observability tests: what a real gateway's /metrics exposes, and promtool."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import open_gateway
from gateway.config import parse_config
from gateway.ops.metrics import metrics_handler
from tests.support.processes import ROOT

PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))

#: Sample names of a metric family, by the type its `# TYPE` line gives (counters' names there
#: already end in `_total`).
_SAMPLES = {
    "counter": ("",),
    "gauge": ("",),
    "untyped": ("",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("", "_count", "_sum"),
}
_TYPE_LINE = re.compile(r"^# TYPE (\S+) (\S+)$")
_SAMPLE_LINE = re.compile(r"^([A-Za-z_:][\w:]*)[{ ]")


def exposition_names(text: str) -> frozenset[str]:
    """Every sample name a Prometheus text exposition declares or carries."""
    names: set[str] = set()
    for line in text.splitlines():
        if match := _TYPE_LINE.match(line):
            family, kind = match.groups()
            names.update(family + suffix for suffix in _SAMPLES[kind])
        elif match := _SAMPLE_LINE.match(line):
            names.add(match.group(1))
    return frozenset(names)


def default_profile(workdir: Path) -> dict[str, object]:
    """config/gateway.yaml on a scratch store, without the health probe, the platform at a
    closed local port: a gateway that never sends anything anywhere."""
    raw = yaml.safe_load((ROOT / "config" / "gateway.yaml").read_text())
    raw["store_url"] = f"sqlite:///{workdir / 'gateway.db'}"
    raw["upstream"]["url"] = "http://127.0.0.1:9"
    raw["upstream"]["auth"]["token_url"] = "http://127.0.0.1:9/accessToken"
    raw["resilience"].pop("probe", None)
    return dict(raw)


ENVIRON = {
    "GATEWAY_DEMO_API_KEY": "scrape",
    "NUONUO_APP_KEY": "scrape",
    "NUONUO_APP_SECRET": "scrape",
    "NUONUO_USER_TAX": "scrape",
}


async def scrape_in_process(workdir: Path) -> str:
    """The text a gateway on the default profile serves at /metrics, fetched over HTTP."""
    config = parse_config(default_profile(workdir), ENVIRON, source="config/gateway.yaml")
    async with open_gateway(config) as gateway:
        app = web.Application()
        app.router.add_get("/metrics", metrics_handler(gateway.metrics.registry))
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            response = await client.get("/metrics")
            assert 200 == response.status
            return await response.text()


@pytest.fixture(scope="session")
def exposed_series(tmp_path_factory: pytest.TempPathFactory) -> frozenset[str]:
    """Every sample name a real gateway (in process, default profile) exposes at /metrics."""
    text = asyncio.run(scrape_in_process(tmp_path_factory.mktemp("scrape")))
    names = exposition_names(text)
    assert "gateway_requests_total" in names, text[:2000]
    return names


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run Debian's promtool from the repository root; fail (not skip) when it is missing."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: run `bash scripts/bootstrap-system.sh` as root")
    return subprocess.run(
        [path, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
