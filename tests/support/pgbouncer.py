"""A PgBouncer of the test's own, in front of the local PostgreSQL server.

    with PgBouncer(database_url, pool_mode="transaction") as bouncer:
        bouncer.url   # postgresql://postgres@127.0.0.1:PORT/<the database's name>

It listens on a free 127.0.0.1 port, trusts every client, and hands each transaction a server
connection from a pool smaller than a gateway's own (`default_pool_size`), so one client
connection's statements really do land on different server connections. As root it runs as the
`postgres` user (PgBouncer refuses root), in a temporary directory it owns; stopped and removed
on exit. Every wait is bounded and polls `pg_isready`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

from tests.support.processes import free_port

START_TIMEOUT_S = 20.0


class PgBouncer:
    def __init__(self, database_url: str, *, pool_mode: str = "transaction", pool_size: int = 3):
        executable = shutil.which("pgbouncer")
        if executable is None:
            raise RuntimeError("pgbouncer is not installed: run scripts/bootstrap-system.sh")
        target = urlsplit(database_url)
        self.name = target.path.lstrip("/")
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/{self.name}"
        self.root = Path(tempfile.mkdtemp(prefix="gwtest-pgbouncer-"))
        users = self.root / "users.txt"
        users.write_text('"postgres" ""\n')
        config = self.root / "pgbouncer.ini"
        config.write_text(
            "[databases]\n"
            f"{self.name} = host={target.hostname} port={target.port or 5432} "
            f"dbname={self.name} user={target.username or 'postgres'}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            f"unix_socket_dir = {self.root}\n"
            "auth_type = trust\n"
            f"auth_file = {users}\n"
            f"pool_mode = {pool_mode}\n"
            f"default_pool_size = {pool_size}\n"
            "max_client_conn = 500\n"
            f"logfile = {self.root / 'pgbouncer.log'}\n"
            f"pidfile = {self.root / 'pgbouncer.pid'}\n"
        )
        argv = [executable, str(config)]
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            for path in (self.root, users, config):
                os.chown(path, owner.pw_uid, owner.pw_gid)
            argv = ["runuser", "-u", "postgres", "--", *argv]
        self._process = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        try:
            self._wait_ready()
        except BaseException:
            self.close()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        probe = ["pg_isready", "-q", "-h", "127.0.0.1", "-p", str(self.port), "-d", self.name]
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited at start:\n{self.log()}")
            if subprocess.run(probe, check=False).returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError(f"pgbouncer did not answer within {START_TIMEOUT_S:g} s:\n{self.log()}")

    def log(self) -> str:
        path = self.root / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        if self._process.poll() is None:
            # The whole session: `runuser` and the pgbouncer it started.
            os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgBouncer:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.close()
