"""The pass-through scenario: nginx as the fast platform and as the reference nginx, the
minimal aiohttp proxy, and one short real run of all four targets (never asserting on speed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.tools.bench.nginx import (
    ISSUE_ANSWER,
    QUERY_ANSWER,
    TOKEN_ANSWER,
    fast_platform_config,
    proxy_config,
)
from gateway.tools.bench.nginx import _literal as nginx_literal
from gateway.tools.bench.reference_proxy import __file__ as reference_file
from gateway.tools.loadgen import SUBMIT_OPERATION
from tests.unit.tools.bench.test_cli import python_m


def test_the_fast_platform_answers_in_the_platform_s_shape(tmp_path: Path) -> None:
    """A token from /accessToken; on the services path, an answer chosen by `method`."""
    config = fast_platform_config(tmp_path, 4321)
    assert "listen 127.0.0.1:4321;" in config
    assert f"location = /accessToken {{ return 200 {nginx_literal(TOKEN_ANSWER)}; }}" in config
    assert f"default {nginx_literal(QUERY_ANSWER)};" in config
    assert f"{SUBMIT_OPERATION} {nginx_literal(ISSUE_ANSWER)};" in config
    assert "E0000" == QUERY_ANSWER["code"] == ISSUE_ANSWER["code"]
    assert str(tmp_path) in config  # pid, logs and temporary files stay in the run's directory


def test_the_reference_nginx_keeps_upstream_connections_open(tmp_path: Path) -> None:
    config = proxy_config(tmp_path, 4322, 4321)
    assert "server 127.0.0.1:4321;" in config
    assert "keepalive 128;" in config
    assert 'proxy_set_header Connection "";' in config
    assert "proxy_http_version 1.1;" in config


def test_an_answer_nginx_would_rewrite_is_refused() -> None:
    """nginx expands `$name` inside a quoted string: a canned answer holding one is refused."""
    with pytest.raises(ValueError, match="cannot hold"):
        nginx_literal({"describe": "costs $5"})


def test_the_reference_proxy_is_fifteen_lines() -> None:
    """The reference is honest only if it is minimal: its code, from the hop-by-hop set to the
    end of `main`, without blank lines, is 18 lines."""
    lines = Path(reference_file).read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("HOP_BY_HOP"))
    end = next(i for i, line in enumerate(lines) if line.startswith("if __name__"))
    code = [line for line in lines[start:end] if line.strip()]
    assert len(code) <= 18, "\n".join(code)


@pytest.mark.integration
def test_a_short_pass_through_run_measures_every_target() -> None:
    """1 s per target with 4 connections: every target answers 200s only, the gateway forwards
    each one (it is not answering from anywhere else), each row has its CPU per 1,000 requests,
    and the ratios and both targets are reported."""
    argv = ["gateway", "bench", "--scenario", "pass-through", "--duration", "1"]
    completed = python_m(*argv, "--connections", "4", "--json", timeout=120)
    assert 0 == completed.returncode, completed.stderr + completed.stdout
    report = json.loads(completed.stdout)
    assert ("pass-through", True, []) == (report["scenario"], report["ok"], report["problems"])
    runs = {run["label"]: run for run in report["runs"]}
    assert [
        "direct",
        "nginx",
        "reference proxy",
        "gateway",
        "direct at half load",
        "gateway at half load",
    ] == list(runs)
    for label, run in runs.items():
        assert run["good"] > 0, label
        assert {"200": run["good"]} == run["statuses"], label
        assert {} == run["errors"], label
        assert "CPU s per 1,000 requests" in run["notes"], label
    for label in ("gateway", "gateway at half load"):
        assert {"forwarded": runs[label]["good"]} == runs[label]["outcomes"]
        assert runs[label]["notes"]["CPU s per 1,000 requests"].startswith("gateway ")
    assert {} == runs["direct"]["outcomes"]  # nginx itself: no gateway outcome header
    assert {
        "gateway / reference proxy",
        "nginx / reference proxy",
        "gateway / nginx",
        "gateway / direct",
    } == set(report["ratios"])
    assert [
        "pass-through, gateway / reference proxy",
        "added p99 latency at half load",
    ] == [target["name"] for target in report["targets"]]
    assert all(isinstance(target["met"], bool) for target in report["targets"])
