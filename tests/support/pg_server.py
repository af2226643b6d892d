"""A PostgreSQL server of the test's own, for tests that stop, kill and start the database.

The shared server (tests/support/postgres.py) must stay up for everyone else; a private one is
`initdb`-ed into a temporary directory, listens on a free 127.0.0.1 port (trust
authentication, user `postgres`) and is removed afterwards, whatever happened:

    with PrivateServer() as server:
        server.start()
        url = server.create_database("outbox")   # postgresql://postgres@127.0.0.1:PORT/outbox
        server.stop()                             # fast shutdown (mode="smart"/"immediate")
        server.start()                            # same port, same data
        server.kill()                             # SIGKILL of the postmaster

PostgreSQL refuses to run as root: as root the server and its tools run as the `postgres`
user, in a directory it owns. Every wait is bounded and polls `pg_isready`.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from tests.support.processes import free_port

#: Signals of the shutdown modes (the postmaster's: SIGTERM smart, SIGINT fast, SIGQUIT
#: immediate).
SHUTDOWN_SIGNALS: Final = {
    "smart": signal.SIGTERM,
    "fast": signal.SIGINT,
    "immediate": signal.SIGQUIT,
}
START_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 30.0
#: How often a bounded wait polls.
POLL_S: Final = 0.05
#: Attempts to start on a free port that another process took meanwhile.
PORT_ATTEMPTS: Final = 3
OWNER: Final = "postgres"
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def bin_dir() -> Path:
    """The newest installed PostgreSQL's binaries (Debian: /usr/lib/postgresql/<v>/bin)."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda path: int(path.parts[-3]) if path.parts[-3].isdigit() else 0,
    )
    if not found:
        raise RuntimeError(
            "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin; run "
            "scripts/ensure-postgres.sh as root"
        )
    return found[-1].parent


class PrivateServer:
    """One PostgreSQL cluster in a temporary directory; `close()` (or leaving the `with`)
    stops it and removes the directory."""

    def __init__(self, *, settings: dict[str, str] | None = None) -> None:
        self._bin = bin_dir()
        self._as_root = os.geteuid() == 0
        self.root = Path(tempfile.mkdtemp(prefix="gwtest-pg-"))
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.port = 0
        #: Server settings on top of the test defaults (`-c name=value`).
        self.settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.root),
            # Durability against a crash of the machine is not what these tests are about; a
            # killed server still finds its WAL in the page cache.
            "fsync": "off",
            "shared_buffers": "32MB",
            "max_connections": "100",
            **(settings or {}),
        }
        self._process: subprocess.Popen[bytes] | None = None
        self._initialised = False
        try:
            if self._as_root:
                owner = pwd.getpwnam(OWNER)
                os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")
            self._initialised = True
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    # -- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> PrivateServer:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int:
        """The postmaster's process id (it is this class's child)."""
        assert self._process is not None, "the server was never started"
        return self._process.pid

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start the postmaster (on the port it had, or a free one the first time) and wait
        until it accepts connections."""
        assert not self.running, "the server is already running"
        for attempt in range(1, PORT_ATTEMPTS + 1):
            first = self.port == 0
            if first:
                self.port = free_port()
            self._spawn()
            if self._wait_ready(timeout_s):
                return
            if not first or attempt == PORT_ATTEMPTS or "could not bind" not in self.log():
                break
            self.port = 0  # someone took the free port meanwhile: try another
        raise RuntimeError(
            f"the private PostgreSQL server did not start on 127.0.0.1:{self.port}\n{self.log()}"
        )

    def stop(self, mode: str = "fast", timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Shut the server down (`smart`, `fast` or `immediate`) and wait until it is gone."""
        if not self.running:
            return
        assert self._process is not None
        self._process.send_signal(SHUTDOWN_SIGNALS[mode])
        try:
            self._process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise RuntimeError(
                f"the private PostgreSQL server did not shut down ({mode}) in {timeout_s:g} s"
                f"\n{self.log()}"
            ) from None
        self._wait_children_gone(timeout_s)

    def kill(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGKILL of the postmaster, as a crash; waits until its backends have exited too (they
        notice their postmaster died), so the server can be started again at once."""
        if not self.running:
            return
        assert self._process is not None
        self._process.kill()
        self._process.wait(timeout=timeout_s)
        self._wait_children_gone(timeout_s)

    def close(self) -> None:
        """Stop the server (fast; killed if that fails) and remove its directory."""
        try:
            if self.running:
                try:
                    self.stop("fast", timeout_s=15.0)
                except RuntimeError:
                    self.kill()
            if self._process is not None:
                self._kill_group()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- use ------------------------------------------------------------------------------

    def url(self, dbname: str = "postgres", *, password: str | None = None) -> str:
        """`postgresql://postgres@127.0.0.1:PORT/dbname` (a password, if given, is ignored by
        the server's trust authentication)."""
        assert self.port, "the server was never started"
        user = f"postgres:{password}" if password is not None else "postgres"
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str = "gateway") -> str:
        """Create database `name`; returns its URL."""
        if not _NAME.match(name):
            raise ValueError(f"not a plain database name: {name!r}")
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run `sql` with psql (stopping at the first error); its output, unaligned."""
        return self._run(
            "psql",
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            dbname,
            "-c",
            sql,
        )

    def ready(self) -> bool:
        """The server accepts connections now (`pg_isready`)."""
        if not self.port:
            return False
        probe = [
            str(self._bin / "pg_isready"),
            "-q",
            "-t",
            "1",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
        ]
        return subprocess.run(probe, check=False, timeout=10).returncode == 0

    def log(self, chars: int = 4000) -> str:
        """The end of the server's log."""
        if not self.log_path.exists():
            return "(no server log)"
        return self.log_path.read_text(errors="replace")[-chars:]

    # -- inside -----------------------------------------------------------------------------

    def _user(self) -> dict[str, Any]:
        """`subprocess` arguments that run a program as the postgres user when we are root."""
        if not self._as_root:
            return {}
        return {"user": OWNER, "group": OWNER, "extra_groups": []}

    def _run(self, program: str, *args: str) -> str:
        result = subprocess.run(
            [str(self._bin / program), *args],
            cwd=self.root,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
            **self._user(),
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{program} failed (exit code {result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip()}"
            )
        return str(result.stdout)

    def _spawn(self) -> None:
        options = [part for item in self.settings.items() for part in ("-c", "=".join(item))]
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [str(self._bin / "postgres"), "-D", str(self.data), "-p", str(self.port), *options],
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # A group of its own: nothing signals it by accident, and its backends can be
                # found (and killed) by group after a crash.
                start_new_session=True,
                **self._user(),
            )

    def _wait_ready(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running:
                return False
            if self.ready():
                return True
            time.sleep(POLL_S)
        return False

    def _wait_children_gone(self, timeout_s: float) -> None:
        """Bounded: until no process of the server's group is left (then kills the rest)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not _group_members(self.pid):
                return
            time.sleep(POLL_S)
        self._kill_group()

    def _kill_group(self) -> None:
        if self._process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        if self._process.poll() is None:
            self._process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _group_members(self.pid) and time.monotonic() < deadline:
            time.sleep(POLL_S)


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group `pgid`."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp …; comm may hold spaces and parentheses.
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) >= 3 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members
