"""Handles on a running simulator and gateway, for integration tests and drills."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.processes import (
    TENANT_KEY,
    ManagedProcess,
    base_env,
    free_port,
    gateway_command,
    http_json,
    write_gateway_config,
)

#: Outbox settings for tests: fast back-off and drain, so they wait seconds, not minutes.
FAST_OUTBOX: dict[str, Any] = {
    "lease": "10s",
    "backoff": {"base": "100ms", "cap": "500ms"},
    "dispatcher": {"concurrency": 8, "rate": 200, "burst": 50, "poll_interval": "100ms"},
}


@dataclass
class Simulator:
    process: ManagedProcess
    url: str
    control_url: str
    #: Where the simulator serves tokens: below `url`, or its own token host's.
    token_url: str = ""

    @classmethod
    def start(
        cls, workdir: Path, *extra: str, dedup: bool = True, token_host: bool = False
    ) -> Simulator:
        """A simulator process with `extra` flags; `dedup=False` issues a reused order number
        again (`--dedup off`), so a blind resend shows as a second invoice; `token_host=True`
        serves tokens on a port of their own (`--token-listen`), as the platform does, and the
        API port answers a token request 404."""
        port, control = free_port(), free_port()
        token_port = free_port() if token_host else None
        own_host = ["--token-listen", f"127.0.0.1:{token_port}"] if token_port else []
        process = ManagedProcess(
            "simulator",
            gateway_command(
                "simulate",
                "--listen",
                f"127.0.0.1:{port}",
                "--control-listen",
                f"127.0.0.1:{control}",
                "--dedup",
                "on" if dedup else "off",
                *own_host,
                *extra,
            ),
            base_env(),
            workdir,
        ).start()
        url = f"http://127.0.0.1:{port}"
        token_url = f"http://127.0.0.1:{token_port}" if token_port else url
        sim = cls(process, url, f"http://127.0.0.1:{control}", f"{token_url}/accessToken")
        process.wait_ready(f"{sim.control_url}/_sim/health")
        return sim

    def __enter__(self) -> Simulator:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.process.stop()

    def ledger(self) -> dict[str, Any]:
        status, _, body = http_json("GET", f"{self.control_url}/_sim/ledger")
        assert status == 200, body
        return dict(body)

    def sends(self, order_no: str) -> int:
        """How many valid requests to issue under `order_no` the platform processed."""
        return int(self.ledger()["orders"].get(order_no, {}).get("sends", 0))

    def change_settings(self, **changes: Any) -> dict[str, Any]:
        """Switch settings at run time (`dedup`, `lookup_lag_s`, ...); all of them as now."""
        status, _, body = http_json("PATCH", f"{self.control_url}/_sim/settings", changes)
        assert status == 200, body
        return dict(body)

    def fault(self, **rule: Any) -> str:
        status, _, body = http_json("POST", f"{self.control_url}/_sim/faults", rule)
        assert status in (200, 201), body
        return str(body["id"])

    def clear_faults(self) -> None:
        http_json("DELETE", f"{self.control_url}/_sim/faults")


@dataclass
class Gateway:
    process: ManagedProcess
    url: str
    config_path: Path
    env: dict[str, str] = field(default_factory=dict)
    #: The admin listener (`admin.listen` of the written config), e.g. for `/metrics`.
    admin_url: str = ""

    @classmethod
    def start(
        cls,
        workdir: Path,
        upstream_url: str,
        *,
        overrides: Mapping[str, Any] | None = None,
        name: str = "gateway",
        env: Mapping[str, str] | None = None,
        profile: str = "gateway.yaml",
    ) -> Gateway:
        """A gateway process on `profile` (a file in config/), pointed at `upstream_url`."""
        workdir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        config_path = write_gateway_config(
            workdir / f"{name}.yaml",
            upstream_url=upstream_url,
            overrides={
                "listen": f"127.0.0.1:{port}",
                "admin.listen": f"127.0.0.1:{free_port()}",
                "store_url": f"sqlite:///{workdir / 'gateway.db'}",
                **(overrides or {}),
            },
            profile=profile,
        )
        full_env = {**base_env(), **(env or {})}
        admin_listen = yaml.safe_load(config_path.read_text())["admin"]["listen"]
        process = ManagedProcess(
            name, gateway_command("run", "--config", str(config_path)), full_env, workdir
        ).start()
        gateway = cls(
            process, f"http://127.0.0.1:{port}", config_path, full_env, f"http://{admin_listen}"
        )
        process.wait_ready(f"{gateway.url}/healthz")
        return gateway

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.process.stop()

    @property
    def store_url(self) -> str:
        """The store this gateway runs on (`store_url` of its config)."""
        return str(yaml.safe_load(self.config_path.read_text())["store_url"])

    def restart(self, *, kill: bool = False) -> None:
        """Stop (gracefully, or with SIGKILL) and start again on the same config and store."""
        if kill:
            self.process.kill9()
        else:
            self.process.stop()
        self.process = ManagedProcess(
            self.process.name, self.process.argv, self.env, self.process.workdir
        ).start()
        self.process.wait_ready(f"{self.url}/healthz")

    def metric(self, sample: str) -> float:
        """One sample's value from the admin listener's /metrics (`name{labels}` as exposed)."""
        status, _, text = http_json("GET", f"{self.admin_url}/metrics")
        assert 200 == status
        for line in str(text).splitlines():
            name, _, value = line.rpartition(" ")
            if name == sample:
                return float(value)
        raise AssertionError(f"{sample} not in /metrics")

    def status(self, submission_id: str, *, api_key: str = TENANT_KEY) -> dict[str, Any]:
        """The submission's status as its tenant sees it."""
        status, _, body = http_json(
            "GET",
            f"{self.url}/gateway/v1/submissions/{submission_id}",
            headers={"X-Api-Key": api_key},
        )
        assert status == 200, body
        return dict(body)

    def admin(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None,
        raw: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        """One admin API call (`path` below `/admin/v1`) with `token` as the bearer token."""
        head = dict(headers or {})
        if token is not None:
            head["Authorization"] = f"Bearer {token}"
        return http_json(method, f"{self.admin_url}/admin/v1{path}", body, headers=head, raw=raw)

    def call(
        self,
        operation: str,
        body: Any,
        *,
        api_key: str | None = TENANT_KEY,
        headers: Mapping[str, str] | None = None,
        raw: bytes | None = None,
        path: str = "/open/v1/services",
    ) -> tuple[int, dict[str, str], Any]:
        """Send one platform operation through the gateway as an integrator would."""
        head = {"method": operation, **(headers or {})}
        if api_key is not None:
            head["X-Api-Key"] = api_key
        return http_json("POST", self.url + path, body, headers=head, raw=raw)
