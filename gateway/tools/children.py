"""The child-process harness the demo, the drills and the bench share: the simulator and a
gateway started as child processes of this interpreter, waited for, and stopped.

    Credentials       fresh, fake platform credentials and tenant key for one run
    Endpoints         free ports on 127.0.0.1 for everything
    scratch_dir       a run's temporary directory (config, store, logs), removed unless kept
    set_dotted        dotted keys (`outbox.dispatcher.rate`) set in a nested config
    write_gateway_config   a profile pointed at the simulator, with overrides, in a scratch dir
    Child             one child process: start, readiness, stop (SIGTERM, then SIGKILL)
    simulator_child, gateway_child, wait_ready, stop_children
    SimulatorControl  the simulator's `/_sim/` API: fault rules, settings and the ledger

    ToolError         a tool cannot run as asked; the message says what to do
    └── ChildStartError   a child did not start; carries the tail of its stderr
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
import yaml

from gateway.config import parse_yaml
from gateway.errors import ConfigError
from gateway.tools.simulator.tax_numbers import make_tax_number

#: The checkout this package runs from (this file is `gateway/tools/children.py` in it).
PACKAGE_ROOT: Final = Path(__file__).resolve().parents[2]
PROFILE: Final = PACKAGE_ROOT / "config" / "gateway.yaml"

READY_TIMEOUT_S: Final = 20.0
STOP_TIMEOUT_S: Final = 5.0


class ToolError(Exception):
    """A tool (demo, drill, bench) cannot run as asked; the message says what to do."""


class ChildStartError(ToolError):
    """A child process did not start; carries the tail of its stderr."""

    def __init__(self, message: str, stderr_tail: str) -> None:
        super().__init__(message)
        self.stderr_tail = stderr_tail

    def explain(self, command: str, config: str = "config/gateway.yaml") -> str:
        """What `invoice-gateway {command}` prints: the error, the child's last words, and
        what to do (`config`: the file the run was based on)."""
        return (
            f"invoice-gateway {command}: {self}.\n--- last lines of its stderr ---\n"
            f"{self.stderr_tail or '(empty)'}\n---\n"
            f"What to do: read the error above; `invoice-gateway check-config {config}` "
            "checks the config, and `--keep` keeps the config and full logs for a look."
        )


@dataclass(frozen=True, slots=True)
class Credentials:
    """Fresh, fake platform credentials and tenant key for one run."""

    app_key: str
    app_secret: str
    user_tax: str
    tenant_key: str

    @classmethod
    def generate(cls) -> Credentials:
        return cls(
            app_key=f"demo{secrets.token_hex(4)}",
            app_secret=secrets.token_hex(16),
            user_tax=make_tax_number(secrets.randbelow(10**9)),
            tenant_key=f"demo-{secrets.token_urlsafe(18)}",
        )

    def child_env(self) -> dict[str, str]:
        """Our environment without gateway settings, plus these credentials."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "NUONUO_"))}
        path = env.get("PYTHONPATH")
        env.update(
            NUONUO_APP_KEY=self.app_key,
            NUONUO_APP_SECRET=self.app_secret,
            NUONUO_USER_TAX=self.user_tax,
            GATEWAY_DEMO_API_KEY=self.tenant_key,
            PYTHONPATH=f"{PACKAGE_ROOT}{os.pathsep}{path}" if path else str(PACKAGE_ROOT),
            PYTHONUNBUFFERED="1",
        )
        return env


@contextlib.contextmanager
def scratch_dir(
    command: str, prefix: str, *, keep: bool, parent: Path | None = None
) -> Iterator[Path]:
    """A fresh temporary directory for one run's config, store and logs (in `parent`, else the
    system's temporary directory): removed afterwards, or kept (and said so) with `--keep`."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield workdir
    finally:
        if keep:
            print(f"invoice-gateway {command}: kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where everything listens, on free ports of 127.0.0.1."""

    simulator_port: int
    control_port: int
    gateway_port: int
    admin_port: int

    @classmethod
    def allocate(cls) -> Endpoints:
        return cls(free_port(), free_port(), free_port(), free_port())

    @property
    def simulator_url(self) -> str:
        return f"http://127.0.0.1:{self.simulator_port}"

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.control_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"


class Child:
    """A child process in its own session, with stdout and stderr in files of `workdir`."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], workdir: Path):
        self.name = name
        self._argv = list(argv)
        self._env = dict(env)
        self._workdir = workdir
        self.stderr_path = workdir / f"{name}.stderr.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with (
            (self._workdir / f"{self.name}.stdout.log").open("wb") as out,
            self.stderr_path.open("wb") as err,
        ):
            # Own session: a Ctrl-C in the terminal reaches only the tool, which stops us.
            self._process = subprocess.Popen(  # noqa: S603 — our own interpreter and module
                self._argv,
                env=self._env,
                cwd=self._workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def exit_code(self) -> int | None:
        """None while it runs (or never started)."""
        return self._process.poll() if self._process is not None else None

    def stderr_tail(self, lines: int = 20) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def wait(self, timeout_s: float) -> bool:
        """Wait for it to exit; False on timeout."""
        if self._process is None:
            return True
        try:
            self._process.wait(timeout=max(timeout_s, 0.0))
        except subprocess.TimeoutExpired:
            return False
        return True

    def _signal(self, signum: signal.Signals) -> None:
        if self._process is not None and self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signum)


def stop_children(children: Sequence[Child], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM to all, then SIGKILL to whatever has not exited after `timeout_s`."""
    for child in children:
        child.terminate()
    deadline = time.monotonic() + timeout_s
    for child in children:
        if not child.wait(deadline - time.monotonic()):
            child.kill()
            child.wait(STOP_TIMEOUT_S)


def set_dotted(config: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Set dotted keys (`outbox.dispatcher.rate`) in `config`, creating parents as needed;
    returns `config`.

    Values are copied, so a later override never changes the caller's dicts. None is written
    as YAML null, which switches off an optional section (`resilience.probe`).
    """
    for key, value in overrides.items():
        node = config
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = copy.deepcopy(value)
    return config


#: Token calls against the simulator, which has no token quota unless told: as many as the
#: compressed timelines of the demo, drills and bench need.
SIMULATOR_TOKEN_CALLS: Final[Mapping[str, Any]] = {
    "per_hour": 1000,
    "per_day": 10000,
    "backoff": {"base": "200ms", "cap": "2s"},
}


#: The reconcile rules' settle time against the simulator: its lookup lists an invoice at once
#: unless told to lag (`--lookup-lag`, kept below this), so absence is proven in seconds.
SIMULATOR_SETTLE: Final = "2s"


def point_at_simulator(config: dict[str, Any], url: str, *, token_url: str | None = None) -> None:
    """Point a gateway `config` (a parsed profile) at a simulator at `url`: its API, its token
    endpoint (`url`/accessToken unless `token_url`), token calls as fast as compressed
    timelines need, and reconcile rules that trust a "not found" after `SIMULATOR_SETTLE`."""
    upstream = config["upstream"]
    upstream["url"] = url
    auth = upstream.get("auth")
    if isinstance(auth, dict) and auth.get("scheme") == "nuonuo-hmac":
        # The profile's token host is the platform's; the simulator serves tokens itself.
        auth["token_url"] = token_url or f"{url}/accessToken"
        auth["token_calls"] = copy.deepcopy(dict(SIMULATOR_TOKEN_CALLS))
    for operation in config.get("operations", []):
        rule = operation.get("reconcile") if isinstance(operation, dict) else None
        if isinstance(rule, dict):
            rule.setdefault("settle", SIMULATOR_SETTLE)


def write_gateway_config(
    workdir: Path,
    endpoints: Endpoints,
    overrides: Mapping[str, Any] | None = None,
    *,
    profile: Path = PROFILE,
    simulator: bool = True,
) -> Path:
    """`profile` (the default profile unless told), pointed at the simulator (its API and its
    token endpoint), with everything else in `workdir` (and `overrides`, dotted keys, applied on
    top). `simulator=False` leaves the profile's platform as it is: a staging drill's overrides
    name it."""
    try:
        config: dict[str, Any] = parse_yaml(
            profile.read_text(encoding="utf-8"), source=str(profile)
        )
    except OSError as exc:
        raise ToolError(
            f"cannot read the profile {profile}: {exc.strerror}; run from a source checkout "
            "(make demo) or name a readable config file"
        ) from None
    except ConfigError as exc:
        # Checked here, before the dump below would hide a key written twice for good.
        raise ToolError(f"the profile {profile} is not a valid configuration: {exc}") from None
    config["listen"] = f"127.0.0.1:{endpoints.gateway_port}"
    config.setdefault("admin", {})["listen"] = f"127.0.0.1:{endpoints.admin_port}"
    config["store_url"] = f"sqlite:///{workdir / 'gateway.db'}"
    if simulator:
        point_at_simulator(config, endpoints.simulator_url)
    config["log"] = {"format": "json", "level": "info"}
    set_dotted(config, overrides or {})
    path = workdir / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


#: How this interpreter runs the gateway's commands in a child.
COMMAND: Final = (sys.executable, "-m", "gateway")


def simulator_child(
    endpoints: Endpoints, env: Mapping[str, str], workdir: Path, *extra: str, dedup: bool = False
) -> Child:
    """The simulator on `endpoints` (API and control listener), not started; `extra` flags.
    By default it issues a reused order number again (`--dedup off`), as a platform that does
    not deduplicate would: only the gateway stands between a resend and a second invoice, so
    that is what the demo, drills and bench show. `dedup=True` refuses it with E9106."""
    return Child(
        "simulator",
        [
            *COMMAND,
            "simulate",
            "--listen",
            f"127.0.0.1:{endpoints.simulator_port}",
            "--control-listen",
            f"127.0.0.1:{endpoints.control_port}",
            "--dedup",
            "on" if dedup else "off",
            *extra,
        ],
        env,
        workdir,
    )


def gateway_child(
    config: Path, env: Mapping[str, str], workdir: Path, name: str = "gateway"
) -> Child:
    """`invoice-gateway run` on `config`, not started."""
    return Child(name, [*COMMAND, "run", "--config", str(config)], env, workdir)


async def wait_ready(
    child: Child, session: aiohttp.ClientSession, url: str, stop: asyncio.Event | None = None
) -> None:
    """Poll `url` until it answers 200 (or `stop` is set); raise `ChildStartError` if the child
    exits or stalls."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline and not (stop and stop.is_set()):
        code = child.exit_code()
        if code is not None:
            raise ChildStartError(
                f"the {child.name} exited with code {code} while starting", child.stderr_tail()
            )
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.1)
    if stop and stop.is_set():
        return
    raise ChildStartError(
        f"the {child.name} did not answer {url} within {READY_TIMEOUT_S:g} s", child.stderr_tail()
    )


# -- the simulator's control API ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LedgerTotals:
    """What the simulated platform says it issued (`GET /_sim/ledger`, `totals`)."""

    accepted: int
    issued: int
    issuing: int
    failed: int
    doubles: int

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> LedgerTotals:
        totals = document.get("totals", {})
        return cls(
            **{name: int(totals.get(name, 0)) for name in cls.__dataclass_fields__},
        )


class SimulatorControl:
    def __init__(self, session: aiohttp.ClientSession, control_url: str) -> None:
        self._session = session
        self._url = control_url.rstrip("/") + "/_sim"
        self._timeout = aiohttp.ClientTimeout(total=3)

    async def add_fault(self, rule: Mapping[str, Any]) -> str:
        """Install a fault rule; its id. Raises `ToolError` when the simulator refuses it."""
        try:
            async with self._session.post(
                f"{self._url}/faults", json=dict(rule), timeout=self._timeout
            ) as response:
                document = await response.json()
                if response.status >= 300:
                    raise ToolError(f"the simulator refused the fault rule {rule}: {document}")
                return str(document["id"])
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ToolError(f"cannot reach the simulator's control API: {exc!r}") from exc

    async def change_settings(self, **changes: Any) -> dict[str, Any]:
        """Switch settings at run time (`PATCH /_sim/settings`: `dedup`, `lookup_lag_s`, ...);
        all of them as they are now. Raises `ToolError` when the simulator refuses."""
        try:
            async with self._session.patch(
                f"{self._url}/settings", json=changes, timeout=self._timeout
            ) as response:
                document = await response.json()
                if response.status != 200:
                    raise ToolError(f"the simulator refused the settings {changes}: {document}")
                return dict(document)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ToolError(f"cannot reach the simulator's control API: {exc!r}") from exc

    async def ledger(self) -> LedgerTotals | None:
        """The ledger's totals, or None when the simulator does not answer."""
        try:
            async with self._session.get(
                f"{self._url}/ledger", params={"invoices": "0"}, timeout=self._timeout
            ) as response:
                if response.status != 200:
                    return None
                return LedgerTotals.from_json(await response.json())
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None


async def platform_listening(port: int) -> bool:
    """Whether the simulated platform accepts TCP connections (a `refuse` outage closes it)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 0.5)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
