"""Real gateway and simulator processes for integration tests: free ports, readiness, cleanup."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

# free_port is the harness's, named here too for the tests that start servers of their own.
from gateway.tools.children import free_port as free_port
from gateway.tools.children import point_at_simulator, set_dotted

READY_TIMEOUT = 20.0
ROOT = Path(__file__).resolve().parents[2]


def http_json(
    method: str,
    url: str,
    body: Any = None,
    *,
    headers: Mapping[str, str] | None = None,
    raw: bytes | None = None,
    timeout: float = 10.0,
) -> tuple[int, dict[str, str], Any]:
    """A blocking HTTP call; returns (status, headers, parsed JSON body or text)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None and not request.has_header("Content-type"):
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, head, payload = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        status, head, payload = exc.code, dict(exc.headers), exc.read()
    try:
        parsed: Any = json.loads(payload)
    except ValueError:
        parsed = payload.decode(errors="replace")
    return status, head, parsed


def wait_until(
    condition: Any, *, timeout: float, interval: float = 0.05, what: str = "condition"
) -> Any:
    """Poll `condition()` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = condition()
        except Exception as exc:
            last_error = exc
        else:
            if result:
                return result
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what} (last error: {last_error})"
    )


class ManagedProcess:
    """A child process with its output in files, stopped (or killed) at the end."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], workdir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = dict(env)
        self.workdir = workdir
        self.stdout_path = workdir / f"{name}.stdout.log"
        self.stderr_path = workdir / f"{name}.stderr.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.stdout_path.open("ab") as out, self.stderr_path.open("ab") as err:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.workdir,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def logs(self) -> str:
        out = self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""
        err = self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""
        return (
            f"--- {self.name} stdout ---\n{out[-4000:]}\n--- {self.name} stderr ---\n{err[-8000:]}"
        )

    def wait_ready(self, url: str, timeout: float = READY_TIMEOUT) -> None:
        def ready() -> bool:
            if not self.alive():
                raise AssertionError(f"{self.name} exited early\n{self.logs()}")
            with contextlib.suppress(OSError):
                status, _, _ = http_json("GET", url, timeout=1.0)
                return status == 200
            return False

        try:
            wait_until(ready, timeout=timeout, what=f"{self.name} at {url}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            return None

    def kill9(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def gateway_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway", *args]


@contextlib.contextmanager
def managed(process: ManagedProcess) -> Iterator[ManagedProcess]:
    try:
        yield process.start()
    finally:
        process.stop()


# Fixed, fake credentials shared by the simulator and the gateway in tests.
APP_KEY = "test-app-key"
APP_SECRET = "test-app-secret"
USER_TAX = "91110108MA01TEST0X"
TENANT_KEY = "tenant-key-demo"
OTHER_TENANT_KEY = "tenant-key-acme"
#: The demo tenant's vendor-SDK credentials (`tenants[].sdk_client`): its own, not the platform's.
SDK_APP_KEY = "sdk-demo-app-key"
SDK_APP_SECRET = "sdk-demo-app-secret"


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "NUONUO_"))}
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "NUONUO_APP_KEY": APP_KEY,
            "NUONUO_APP_SECRET": APP_SECRET,
            "NUONUO_USER_TAX": USER_TAX,
            "GATEWAY_DEMO_API_KEY": TENANT_KEY,
            "GATEWAY_ACME_API_KEY": OTHER_TENANT_KEY,
            "GATEWAY_DEMO_SDK_APP_KEY": SDK_APP_KEY,
            "GATEWAY_DEMO_SDK_APP_SECRET": SDK_APP_SECRET,
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def write_gateway_config(
    path: Path,
    *,
    upstream_url: str,
    overrides: Mapping[str, Any] | None = None,
    profile: str = "gateway.yaml",
) -> Path:
    """A profile in config/ (the default profile unless told) pointed at `upstream_url`, tokens
    included (`upstream_url`/accessToken, unless `overrides` name another
    `upstream.auth.token_url`), with `overrides`."""
    config = yaml.safe_load((ROOT / "config" / profile).read_text())
    point_at_simulator(config, upstream_url)
    config["log"] = {"format": "json", "level": "info"}
    config["tenants"].append({"id": "acme", "api_key": {"env": "GATEWAY_ACME_API_KEY"}})
    # Tests that count platform calls must not see a background probe unless they ask for one.
    config["resilience"].pop("probe", None)
    set_dotted(config, overrides or {})
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


#: Debian's libfaketime (scripts/bootstrap-system.sh installs it).
LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def faketime_env(timestamp_file: Path) -> dict[str, str]:
    """Environment under which a process's wall clock follows `timestamp_file` ("+3600": an hour
    ahead, rewritable while it runs) with libfaketime; its monotonic clock is left alone, as an
    NTP step leaves it.

    libfaketime's "monotonic fix" (on by default in 0.9.10) wraps `pthread_cond_timedwait` so
    that every hand-off between threads takes milliseconds; aiosqlite hands each store call to
    its thread, so the gateway would crawl at a few requests per second. Off, the clock is
    faked the same way (only `time.sleep` is broken under `DONT_FAKE_MONOTONIC`, and the
    gateway never calls it)."""
    assert LIBFAKETIME.exists(), "libfaketime is missing: run scripts/bootstrap-system.sh as root"
    return {
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME_TIMESTAMP_FILE": str(timestamp_file),
        "FAKETIME_CACHE_DURATION": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "FAKETIME_FORCE_MONOTONIC_FIX": "0",
    }


def jumped_clock(workdir: Path, offset: str) -> dict[str, str]:
    """`faketime_env` with the clock at `offset` (e.g. "+3600") in `workdir/faketime`."""
    workdir.mkdir(parents=True, exist_ok=True)
    timestamp_file = workdir / "faketime"
    timestamp_file.write_text(f"{offset}\n")
    return faketime_env(timestamp_file)
