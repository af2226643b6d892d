"""SIGHUP reloads the configuration file of a running gateway (real processes): a tenant's
limits change while requests keep flowing, none dropped; a file with problems changes nothing;
what only a restart applies is named in the log."""

from __future__ import annotations

import signal
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.test_core_gateway import QUERY
from tests.integration.test_outbox import OVERRIDES
from tests.support.harness import Gateway, Simulator
from tests.support.processes import wait_until

pytestmark = pytest.mark.integration

#: Two reads a second, bursts of two: a quick run of reads is mostly refused (429).
TIGHT = {"rate": 2, "burst": 2}


@pytest.fixture
def gateway(tmp_path: Path, simulator: Simulator) -> Iterator[Gateway]:
    """The conftest's simulator, and a gateway whose tenants are held to `TIGHT`."""
    overrides = {**OVERRIDES, "limits.tenant": TIGHT}
    with Gateway.start(tmp_path / "gw", simulator.url, overrides=overrides) as gw:
        yield gw


def read(gateway: Gateway) -> int:
    status, _, _ = gateway.call(QUERY, {"orderNos": ["reload-test"]})
    return status


def burst(gateway: Gateway, n: int = 20) -> Counter[int]:
    return Counter(read(gateway) for _ in range(n))


def edit_config(gateway: Gateway, change: dict[str, Any]) -> None:
    """Change top-level sections of the gateway's configuration file (merged one level deep)."""
    config = yaml.safe_load(gateway.config_path.read_text())
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key].update(value)
        else:
            config[key] = value
    gateway.config_path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False))


def hang_up(gateway: Gateway, expect: str) -> str:
    """SIGHUP, then the log line saying how the reload went."""
    log = gateway.process.stderr_path
    before = len(log.read_text().splitlines())
    gateway.process.process.send_signal(signal.SIGHUP)  # type: ignore[union-attr]

    def said() -> str | None:
        new = log.read_text().splitlines()[before:]
        return next((line for line in new if expect in line), None)

    line: str = wait_until(said, timeout=10, interval=0.05, what=f"the log to say {expect!r}")
    return line


def test_sighup_lifts_a_tenant_limit_without_dropping_a_request(gateway: Gateway) -> None:
    """Reads refused at 2/s; the file says 1000/s and SIGHUP arrives while a client keeps
    sending: every one of its requests is answered (200 or 429, no connection dropped), and the
    next burst passes whole. The same SIGHUP names the change that waits for a restart."""
    assert burst(gateway)[429] > 0
    statuses: Counter[int] = Counter()
    errors: list[BaseException] = []
    stop = threading.Event()

    def keep_reading() -> None:
        while not stop.is_set():
            try:
                statuses[read(gateway)] += 1
            except Exception as exc:  # a dropped request would land here
                errors.append(exc)

    client = threading.Thread(target=keep_reading)
    client.start()
    try:
        wait_until(lambda: sum(statuses.values()) >= 20, timeout=10, what="traffic flowing")
        edit_config(
            gateway,
            {"limits": {"tenant": {"rate": 1000, "burst": 1000}}, "upstream": {"timeout": "3s"}},
        )
        line = hang_up(gateway, "configuration reloaded")
        assert '"tenants"' in line
        restart = restart_warning(gateway)
        counted = sum(statuses.values())
        wait_until(lambda: sum(statuses.values()) >= counted + 20, timeout=10, what="more traffic")
    finally:
        stop.set()
        client.join(timeout=10)
    assert [] == errors
    assert set(statuses) <= {200, 429}, statuses
    assert {200: 20} == burst(gateway)
    assert "upstream" in restart


def restart_warning(gateway: Gateway) -> str:
    """The warning of the reload just made, naming what waits for a restart."""

    def said() -> str | None:
        text = gateway.process.stderr_path.read_text()
        return next((line for line in text.splitlines() if "only after a restart" in line), None)

    line: str = wait_until(said, timeout=5, interval=0.05, what="the restart warning")
    return line


def test_a_file_with_problems_changes_nothing(gateway: Gateway) -> None:
    """A misspelt key: the reload is refused with the problem named, the limits stay."""
    edit_config(gateway, {"limits": {"tenant": {"rate": 1000, "burst": 1000, "sped": 1}}})
    line = hang_up(gateway, "configuration not reloaded")
    assert "sped" in line
    after = burst(gateway)
    assert after[200] > 0  # still serving
    assert after[429] > 0  # under the old limits


def test_sighup_changes_the_log_level(gateway: Gateway) -> None:
    """At `info` every request has its access line; reloaded at `warning`, a burst adds none
    (and the reload itself is still reported)."""
    log = gateway.process.stderr_path

    def access_lines() -> int:
        return sum('"event":"request"' in line for line in log.read_text().splitlines())

    burst(gateway, 5)
    wait_until(lambda: access_lines() >= 5, timeout=5, what="the access lines")
    edit_config(gateway, {"log": {"level": "warning"}})
    line = hang_up(gateway, "configuration reloaded")
    assert '"log_level":"warning"' in line
    before = access_lines()
    burst(gateway, 5)
    assert before == access_lines()
    assert "only after a restart" not in log.read_text()  # the level reloads: nothing waits


def test_sighup_reloads_what_business_codes_mean(tmp_path: Path, simulator: Simulator) -> None:
    """The platform answers one read "busy" (040102). While the file lists no code as
    retryable, that answer is the client's (relayed once); once it lists 040102 again and
    SIGHUP arrives, the same answer is retried and the client gets the platform's success."""
    overrides = {**OVERRIDES, "upstream.business_codes.retryable": []}
    with Gateway.start(tmp_path / "gw", simulator.url, overrides=overrides) as gateway:

        def busy_once_then_read() -> tuple[int, Any]:
            simulator.fault(kind="busy", operations=[QUERY], count=1)
            status, _, answer = gateway.call(QUERY, {"orderNos": ["reload-codes"]})
            return status, answer["code"]

        assert (200, "040102") == busy_once_then_read()
        edit_config(gateway, {"upstream": {"business_codes": {"retryable": ["040102"]}}})
        line = hang_up(gateway, "configuration reloaded")
        assert "upstream.business_codes" in line
        assert (200, "E0000") == busy_once_then_read()
        assert "only after a restart" not in gateway.process.stderr_path.read_text()
