"""The compose stack (deploy/compose/compose.yaml), checked without a container engine (none
runs here): it parses, every build context, Dockerfile and file or directory it mounts exists,
images are pinned, ports stay on 127.0.0.1, the replicas get time to stop gracefully, and its
Prometheus scrapes both replicas and passes `promtool check config`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import ShutdownConfig
from gateway.quantities import parse_duration
from tests.support.processes import ROOT

COMPOSE_DIR = ROOT / "deploy" / "compose"


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text())
    return document


def services() -> dict[str, dict[str, Any]]:
    return dict(compose()["services"])


def test_the_stack_has_two_replicas_on_postgresql_and_everything_around_them() -> None:
    found = services()
    assert {
        "postgres",
        "gateway-1",
        "gateway-2",
        "simulator",
        "prometheus",
        "alertmanager",
        "dingtalk-bridge",
        "grafana",
    } == set(found)
    assert ["demo"] == found["simulator"]["profiles"]
    for replica in ("gateway-1", "gateway-2"):
        environment = found[replica]["environment"]
        assert environment["GATEWAY_STORE_URL"].startswith("postgresql://")
        assert "service_healthy" == found[replica]["depends_on"]["postgres"]["condition"]


@pytest.mark.parametrize("name", sorted(services()))
def test_what_each_service_builds_and_mounts_exists(name: str) -> None:
    service = services()[name]
    build = service.get("build")
    if build is not None:
        context = (COMPOSE_DIR / build["context"]).resolve()
        assert context.is_dir()
        assert (context / build["dockerfile"]).is_file()
    for mount in service.get("volumes", []):
        source = mount.split(":", 1)[0]
        if source.startswith("."):
            assert (COMPOSE_DIR / source).exists(), f"{name} mounts {source}"
    for env_file in service.get("env_file", []):
        assert (COMPOSE_DIR / f"{env_file['path']}.example").is_file()
    image = service.get("image", "")
    assert re.fullmatch(r"[\w./-]+:[\w.-]+", image), f"{name}: pin the image ({image!r})"
    assert not image.endswith(":latest")
    for port in service.get("ports", []):
        assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond this host"


def test_replicas_get_longer_to_stop_than_their_grace_period() -> None:
    grace = ShutdownConfig().grace_period
    for replica in ("gateway-1", "gateway-2"):
        assert parse_duration(services()[replica]["stop_grace_period"]) > grace


def test_the_secrets_file_stays_out_of_version_control() -> None:
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "deploy/compose/gateway.env"],
        cwd=ROOT,
        check=False,
    )
    assert 0 == ignored.returncode


def test_prometheus_scrapes_every_replica_and_its_config_is_valid(tmp_path: Path) -> None:
    config = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    targets = {
        target.split(":")[0] for group in job["static_configs"] for target in group["targets"]
    }
    assert {"gateway-1", "gateway-2"} == targets
    [alerting] = config["alerting"]["alertmanagers"]
    assert ["alertmanager:9093"] == alerting["static_configs"][0]["targets"]
    # As mounted: the rules next to it.
    shutil.copy(COMPOSE_DIR / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copytree(ROOT / "deploy" / "prometheus" / "rules", tmp_path / "rules")
    checked = subprocess.run(
        ["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert 0 == checked.returncode, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout + checked.stderr


def test_alertmanager_reaches_the_dingtalk_bridge_of_the_stack() -> None:
    """The shipped routing posts DingTalk alerts to `dingtalk-bridge:8060`: that service is in
    the stack, and its profile `ops` is the one the URL names."""
    routing = yaml.safe_load((ROOT / "deploy/alertmanager/alertmanager.yml").read_text())
    [receiver] = [r for r in routing["receivers"] if r["name"] == "dingtalk-ops"]
    url = receiver["webhook_configs"][0]["url"]
    assert url.startswith("http://dingtalk-bridge:8060/dingtalk/")
    profile = url.split("/dingtalk/")[1].split("/")[0]
    bridge = yaml.safe_load((COMPOSE_DIR / "dingtalk.yml").read_text())
    assert profile in bridge["targets"]
    assert "dingtalk-bridge" in services()


def test_grafana_finds_the_dashboards_where_they_are_mounted() -> None:
    grafana = services()["grafana"]
    provider = yaml.safe_load(
        (COMPOSE_DIR / "grafana/provisioning/dashboards/invoice-gateway.yml").read_text()
    )
    path = provider["providers"][0]["options"]["path"]
    mounted = {
        target: source for source, target, *_ in (mount.split(":") for mount in grafana["volumes"])
    }
    assert path in mounted
    assert list((COMPOSE_DIR / mounted[path]).glob("*.json"))


def test_the_dingtalk_bridge_renders_the_bilingual_message(tmp_path: Path) -> None:
    """The bridge reads the project's template where the stack mounts it, and its message
    template renders (with Alertmanager's template engine, which the bridge uses) Chinese
    first, then English, then the runbook link."""
    bridge = yaml.safe_load((COMPOSE_DIR / "dingtalk.yml").read_text())
    mounts = dict(mount.split(":")[:2] for mount in services()["dingtalk-bridge"]["volumes"])
    [template_path] = bridge["templates"]
    directory, name = template_path.rsplit("/", 1)
    source = next(src for src, target in mounts.items() if target == directory)
    assert (COMPOSE_DIR / source / name).is_file()
    annotations = {
        "summary_zh": "开票平台不可用",
        "description_zh": "发件箱正在积压",
        "summary": "The invoice platform is down",
        "description": "The outbox is filling",
        "runbook_url": "https://runbook.example/platform-down",
    }
    data = {
        "receiver": "dingtalk-ops",
        "status": "firing",
        "alerts": [
            {
                "status": "firing",
                "labels": {
                    "alertname": "GatewayPlatformDown",
                    "severity": "page",
                    "instance": "gw-1:8081",
                },
                "annotations": annotations,
                "startsAt": "2026-12-07T01:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
            }
        ],
        "groupLabels": {"alertname": "GatewayPlatformDown"},
        "commonLabels": {"alertname": "GatewayPlatformDown", "severity": "page"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
    }
    data_file = tmp_path / "data.json"
    data_file.write_text(json.dumps(data))
    rendered = {
        part: subprocess.run(
            [
                "amtool",
                "template",
                "render",
                f"--template.glob={COMPOSE_DIR / source / name}",
                f"--template.text={bridge['targets']['ops']['message'][part]}",
                f"--template.data={data_file}",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        for part in ("title", "text")
    }
    assert all(0 == r.returncode for r in rendered.values()), rendered
    assert "GatewayPlatformDown" in rendered["title"].stdout
    text = rendered["text"].stdout
    order = [
        text.index(annotations[key])
        for key in ("summary_zh", "description_zh", "summary", "description", "runbook_url")
    ]
    assert order == sorted(order), text
