"""The shipped alert routing, checked and delivered for real.

- `amtool check-config` accepts deploy/alertmanager/alertmanager.yml, and `amtool config routes
  test` sends every alert of the project's rules where its severity says: pages to WeCom,
  DingTalk and e-mail, tickets to e-mail;
- end to end: a real gateway whose platform is down, the real Prometheus evaluating the
  project's rules (the platform-down alert's `for:` cut to 1 s, nothing else changed), firing
  into a real Alertmanager on the shipped configuration (only its endpoints pointed here),
  which delivers to a stand-in WeCom API (its token call, then the message) and a stand-in
  DingTalk bridge. The messages carry the alert's summary and description in Chinese and English
  and its runbook section.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.observability.conftest import RULE_FILES
from tests.observability.test_prometheus_live import OVERRIDES, Prometheus
from tests.observability.test_rules import alerts
from tests.support.harness import Gateway, Simulator
from tests.support.processes import ROOT, ManagedProcess, base_env, free_port, wait_until

ALERTMANAGER_DIR = ROOT / "deploy" / "alertmanager"
CONFIG = ALERTMANAGER_DIR / "alertmanager.yml"
RECEIVERS = {"page": "wecom-oncall,dingtalk-ops,email-ops", "ticket": "email-ops"}


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("amtool")
    if binary is None:
        pytest.fail("amtool is missing: run `bash scripts/bootstrap-system.sh` as root")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=30, check=False)


def alert_rules() -> list[dict[str, Any]]:
    return list(alerts().values())


def test_the_shipped_configuration_is_valid() -> None:
    checked = amtool("check-config", str(CONFIG))
    assert 0 == checked.returncode, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_every_alert_reaches_the_receivers_of_its_severity(rule: dict[str, Any]) -> None:
    severity = rule["labels"]["severity"]
    routed = amtool(
        "config",
        "routes",
        "test",
        f"--config.file={CONFIG}",
        f"alertname={rule['alert']}",
        f"severity={severity}",
        "tenant=demo",
    )
    assert 0 == routed.returncode, routed.stderr
    assert RECEIVERS[severity] == routed.stdout.strip()


def test_every_receiver_shows_both_languages() -> None:
    """WeCom and e-mail render `gateway.text`, which shows the Chinese summary and description,
    then the English ones; the DingTalk bridge gets Alertmanager's webhook document, which
    carries every annotation (the end-to-end test below checks both)."""
    template = (ALERTMANAGER_DIR / "templates" / "gateway.tmpl").read_text()
    [text] = re.findall(r'\{\{ define "gateway.text" -\}\}(.*?)\{\{- end \}\}', template, re.S)
    shown = re.findall(r"\{\{ \.Annotations\.(\w+) \}\}", text)
    assert ["summary_zh", "description_zh", "summary", "description", "runbook_url"] == shown
    config = yaml.safe_load(CONFIG.read_text())
    for receiver in config["receivers"]:
        for wecom in receiver.get("wechat_configs", []):
            assert '{{ template "gateway.text" . }}' == wecom["message"], receiver["name"]
        for mail in receiver.get("email_configs", []):
            assert '{{ template "gateway.text" . }}' == mail["text"], receiver["name"]
            assert "html" not in mail, "an HTML body would need both languages too"
        assert set(receiver) <= {"name", "wechat_configs", "email_configs", "webhook_configs"}


def test_inhibitions_name_alerts_that_exist() -> None:
    """An inhibition naming an alert that no rule defines would silently never apply."""
    names = {rule["alert"] for rule in alert_rules()}
    config = yaml.safe_load(CONFIG.read_text())
    mentioned = set()
    for inhibit in config["inhibit_rules"]:
        for matcher in inhibit["source_matchers"] + inhibit["target_matchers"]:
            found = re.fullmatch(r'alertname=~?"(.+)"', matcher)
            assert found, matcher
            mentioned |= set(found.group(1).split("|"))
    assert mentioned <= names, mentioned - names


# -- end to end ---------------------------------------------------------------------------------


@dataclass
class Inbox:
    """What the stand-in WeCom API and DingTalk bridge were sent."""

    wecom: list[dict[str, Any]] = field(default_factory=list)
    dingtalk: list[dict[str, Any]] = field(default_factory=list)
    token_calls: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def stand_in(inbox: Inbox) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_: Any) -> None:
            return None

        def _answer(self, document: dict[str, Any]) -> None:
            body = json.dumps(document).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            # WeCom: gettoken?corpid=…&corpsecret=…
            assert self.path.startswith("/cgi-bin/gettoken?"), self.path
            with inbox.lock:
                inbox.token_calls += 1
            self._answer({"errcode": 0, "access_token": "wecom-token", "expires_in": 7200})

        def do_POST(self) -> None:
            document = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with inbox.lock:
                if self.path.startswith("/cgi-bin/message/send?access_token=wecom-token"):
                    inbox.wecom.append(document)
                else:
                    assert "/dingtalk/ops/send" == self.path, self.path
                    inbox.dingtalk.append(document)
            self._answer({"errcode": 0, "errmsg": "ok"})

    return Handler


@pytest.fixture
def inbox() -> Iterator[tuple[Inbox, str]]:
    received = Inbox()
    server = ThreadingHTTPServer(("127.0.0.1", 0), stand_in(received))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield received, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def start_alertmanager(workdir: Path, endpoint: str) -> tuple[ManagedProcess, str]:
    """The shipped configuration, its WeCom API and DingTalk bridge pointed at `endpoint`, the
    mail server at a closed port, and the groups sent at once (1 s instead of 30 s)."""
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        pytest.fail("alertmanager is missing: run `bash scripts/bootstrap-system.sh` as root")
    config = yaml.safe_load(CONFIG.read_text())
    config["global"]["wechat_api_url"] = f"{endpoint}/cgi-bin/"
    config["global"]["smtp_smarthost"] = f"127.0.0.1:{free_port()}"
    config["templates"] = [str(ALERTMANAGER_DIR / "templates" / "*.tmpl")]
    config["route"].update(group_wait="1s", group_interval="1s")
    [dingtalk] = [r for r in config["receivers"] if r["name"] == "dingtalk-ops"]
    dingtalk["webhook_configs"][0]["url"] = f"{endpoint}/dingtalk/ops/send"
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    port = free_port()
    process = ManagedProcess(
        "alertmanager",
        [
            binary,
            f"--config.file={path}",
            f"--storage.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",  # no gossip port: one instance, loopback only
            "--log.level=warn",
        ],
        base_env(),
        workdir,
    ).start()
    process.wait_ready(f"http://127.0.0.1:{port}/-/ready")
    return process, f"127.0.0.1:{port}"


def quick_rules(workdir: Path) -> list[Path]:
    """The project's rules, with the platform-down alert firing after 1 s instead of 2 min."""
    workdir.mkdir(parents=True, exist_ok=True)
    copies = []
    for path in RULE_FILES:
        document = yaml.safe_load(path.read_text())
        for group in document["groups"]:
            for rule in group["rules"]:
                if rule.get("alert") == "GatewayPlatformDown":
                    rule["for"] = "1s"
        copy = workdir / path.name
        copy.write_text(yaml.safe_dump(document, allow_unicode=True))
        copies.append(copy)
    return copies


@pytest.mark.integration
def test_platform_down_reaches_wecom_and_dingtalk_in_both_languages(
    tmp_path: Path, inbox: tuple[Inbox, str]
) -> None:
    received, endpoint = inbox
    alertmanager, alertmanager_at = start_alertmanager(tmp_path / "alertmanager", endpoint)
    try:
        with (
            Simulator.start(tmp_path / "sim") as simulator,
            Gateway.start(tmp_path / "gw", simulator.url, overrides=OVERRIDES) as gateway,
        ):
            prometheus = Prometheus.start(
                tmp_path / "prometheus",
                [gateway.admin_url.removeprefix("http://")],
                rule_files=quick_rules(tmp_path / "rules"),
                alertmanagers=[alertmanager_at],
            )
            try:
                simulator.fault(kind="http_error", status=503)

                def delivered() -> bool:
                    with received.lock:
                        return bool(received.wecom) and bool(received.dingtalk)

                wait_until(delivered, timeout=45, interval=0.25, what="the alert delivered")
            finally:
                prometheus.process.stop()
    finally:
        alertmanager.stop()
    with received.lock:
        [wecom, *_] = received.wecom
        [dingtalk, *_] = received.dingtalk
        assert received.token_calls >= 1
    # WeCom: the application message, text in Chinese and English, with the runbook section.
    assert ("text", "CHANGE-ME-agent-id", "CHANGE-ME-department-id") == (
        wecom["msgtype"],
        wecom["agentid"],
        wecom["toparty"],
    )
    message = wecom["text"]["content"]
    annotations = alerts()["GatewayPlatformDown"]["annotations"]
    assert "【告警 FIRING】 GatewayPlatformDown (page)" in message
    assert "开票平台不可用" in message
    # Its descriptions carry no template values: they arrive as written, Chinese first.
    assert annotations["description_zh"] in message
    assert "The invoice platform is down" in message
    assert annotations["description"] in message
    assert message.index(annotations["description_zh"]) < message.index("The invoice platform")
    assert "处理手册 Runbook: docs/runbook.md#the-platform-is-down" in message
    # DingTalk bridge: Alertmanager's webhook document, the alert with both summaries.
    [alert] = [a for a in dingtalk["alerts"] if a["labels"]["alertname"] == "GatewayPlatformDown"]
    assert "firing" == alert["status"]
    assert "page" == alert["labels"]["severity"]
    assert alert["annotations"]["summary_zh"].startswith("开票平台不可用")
    assert alert["annotations"]["description_zh"] == annotations["description_zh"]
    assert alert["annotations"]["description"] == annotations["description"]
    assert alert["annotations"]["runbook_url"] == "docs/runbook.md#the-platform-is-down"
