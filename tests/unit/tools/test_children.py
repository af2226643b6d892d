"""The child-process harness the demo, the drills and the bench share: config overrides, the
gateway config it writes, scratch directories, and children that fail to start or to stop."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gateway.tools.children import (
    PACKAGE_ROOT,
    PROFILE,
    Child,
    ChildStartError,
    Endpoints,
    ToolError,
    scratch_dir,
    set_dotted,
    stop_children,
    wait_ready,
    write_gateway_config,
)
from tests.support.processes import ROOT, wait_until

# -- set_dotted ---------------------------------------------------------------------------------


def test_set_dotted_reaches_into_nested_keys_and_creates_parents() -> None:
    """`a.b.c` sets config["a"]["b"]["c"], keeps the siblings, and makes missing parents."""
    config: dict[str, Any] = {"log": {"level": "info", "format": "json"}}
    set_dotted(config, {"log.level": "warning", "outbox.dispatcher.rate": 40, "listen": ":1"})
    assert {
        "log": {"level": "warning", "format": "json"},
        "outbox": {"dispatcher": {"rate": 40}},
        "listen": ":1",
    } == config


def test_set_dotted_none_switches_a_section_off() -> None:
    """None replaces a whole section with null (e.g. no background probe)."""
    config: dict[str, Any] = {"resilience": {"probe": {"interval": "15s"}, "breaker": {}}}
    assert config is set_dotted(config, {"resilience.probe": None})
    assert {"resilience": {"probe": None, "breaker": {}}} == config


def test_set_dotted_never_changes_the_callers_values() -> None:
    """A dict given as a value is copied: a later dotted key does not write into the caller's."""
    backoff = {"base": "200ms"}
    config: dict[str, Any] = {}
    set_dotted(config, {"outbox.backoff": backoff, "outbox.backoff.cap": "2s"})
    assert {"outbox": {"backoff": {"base": "200ms", "cap": "2s"}}} == config
    assert {"base": "200ms"} == backoff


# -- the gateway config and the scratch directory -----------------------------------------------


def test_package_root_is_the_checkout() -> None:
    """The harness finds the checkout (and its default profile) wherever it lives in it."""
    assert ROOT == PACKAGE_ROOT
    assert PROFILE.is_file()


def test_gateway_config_points_at_the_simulator_with_everything_in_the_workdir(
    tmp_path: Path,
) -> None:
    """The profile gets the run's ports and store, JSON logs, and the overrides on top."""
    endpoints = Endpoints(1, 2, 3, 4)
    path = write_gateway_config(tmp_path, endpoints, {"log.level": "warning"})
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert (
        "127.0.0.1:3",
        "127.0.0.1:4",
        f"sqlite:///{tmp_path / 'gateway.db'}",
        "http://127.0.0.1:1",
        {"format": "json", "level": "warning"},
    ) == (
        config["listen"],
        config["admin"]["listen"],
        config["store_url"],
        config["upstream"]["url"],
        config["log"],
    )


def test_gateway_config_asks_the_simulator_for_tokens(tmp_path: Path) -> None:
    """The profile's token host is the platform's; a run against the simulator asks the
    simulator, which has no token quota to spare calls of."""
    path = write_gateway_config(tmp_path, Endpoints(1, 2, 3, 4))
    auth = yaml.safe_load(path.read_text(encoding="utf-8"))["upstream"]["auth"]
    assert "http://127.0.0.1:1/accessToken" == auth["token_url"]
    assert 1000 == auth["token_calls"]["per_hour"]


def test_gateway_config_for_a_staging_platform_keeps_its_token_host(tmp_path: Path) -> None:
    """With `simulator=False` the profile's platform, token host and token limits stay."""
    path = write_gateway_config(
        tmp_path, Endpoints(1, 2, 3, 4), {"upstream.url": "http://relay"}, simulator=False
    )
    upstream = yaml.safe_load(path.read_text(encoding="utf-8"))["upstream"]
    profile = yaml.safe_load(PROFILE.read_text(encoding="utf-8"))["upstream"]["auth"]
    assert ("http://relay", profile["token_url"], profile["token_calls"]) == (
        upstream["url"],
        upstream["auth"]["token_url"],
        upstream["auth"]["token_calls"],
    )


def test_unreadable_profile_is_a_tool_error_naming_it(tmp_path: Path) -> None:
    """A missing profile stops the run with its path in the message."""
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ToolError, match=f"cannot read the profile {missing}"):
        write_gateway_config(tmp_path, Endpoints(1, 2, 3, 4), profile=missing)


def test_profile_with_a_key_written_twice_is_a_tool_error(tmp_path: Path) -> None:
    """A repeated key in the profile stops the run, before the written copy could hide it."""
    profile = tmp_path / "profile.yaml"
    profile.write_text("listen: 127.0.0.1:1\nupstream: {url: http://a}\nlisten: 127.0.0.1:2\n")
    with pytest.raises(ToolError, match="listen: written twice, at lines 1 and 3"):
        write_gateway_config(tmp_path, Endpoints(1, 2, 3, 4), profile=profile)


def test_scratch_dir_is_removed_unless_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The directory (made in `parent`) is gone afterwards; with keep it stays and is named."""
    with scratch_dir("bench", "run-", keep=False, parent=tmp_path) as removed:
        assert removed.parent == tmp_path
    with scratch_dir("bench", "run-", keep=True, parent=tmp_path) as kept:
        pass
    assert (False, True) == (removed.exists(), kept.is_dir())
    assert f"invoice-gateway bench: kept {kept}" in capsys.readouterr().err


# -- children -----------------------------------------------------------------------------------


def python_child(tmp_path: Path, name: str, code: str) -> Child:
    return Child(name, [sys.executable, "-c", code], dict(os.environ), tmp_path)


async def test_child_that_exits_at_start_reports_its_stderr(tmp_path: Path) -> None:
    """A child dying while starting raises ChildStartError carrying its last stderr lines."""
    child = python_child(tmp_path, "gateway", "import sys; sys.exit('boom: bad config')")
    child.start()
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ChildStartError, match="exited with code 1") as caught:
            await wait_ready(child, session, "http://127.0.0.1:9/healthz")
    assert "boom: bad config" in caught.value.stderr_tail


def test_child_ignoring_sigterm_is_killed(tmp_path: Path) -> None:
    """stop_children falls back to SIGKILL when SIGTERM is ignored."""
    ready = tmp_path / "ready"
    code = (
        "import pathlib, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"pathlib.Path({str(ready)!r}).touch(); time.sleep(60)"
    )
    child = python_child(tmp_path, "stubborn", code)
    child.start()
    wait_until(ready.exists, timeout=10, what="the child to ignore SIGTERM")
    started = time.monotonic()
    stop_children([child], timeout_s=0.5)
    assert child.exit_code() is not None
    assert time.monotonic() - started < 5
