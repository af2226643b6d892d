"""The gateway speaks systemd's notification protocol (`Type=notify`), seen by a real process
talking to a Unix datagram socket this test holds as systemd would: `READY=1` only once both
listeners accept connections, `RELOADING=1` … `READY=1` around a SIGHUP reload, `STOPPING=1` at
SIGTERM."""

from __future__ import annotations

import signal
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.harness import Simulator
from tests.support.processes import (
    ManagedProcess,
    base_env,
    free_port,
    gateway_command,
    write_gateway_config,
)

pytestmark = pytest.mark.integration

#: Seconds to wait for one message: start-up, a reload or a stop takes well under this.
MESSAGE_TIMEOUT = 30.0


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket in a short directory (Unix socket paths are limited to 108
    bytes; pytest's temporary directories can be longer)."""
    directory = Path(tempfile.mkdtemp(prefix="gw-notify-", dir="/tmp"))
    path = directory / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(MESSAGE_TIMEOUT)
    try:
        yield sock, str(path)
    finally:
        sock.close()
        path.unlink(missing_ok=True)
        directory.rmdir()


def receive(sock: socket.socket) -> dict[str, str]:
    message = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in message.splitlines())


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def test_ready_reloading_and_stopping_are_told_to_systemd(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, address = notify_socket
    port, admin_port = free_port(), free_port()
    with Simulator.start(tmp_path / "sim") as sim:
        config = write_gateway_config(
            tmp_path / "gateway.yaml",
            upstream_url=sim.url,
            overrides={
                "listen": f"127.0.0.1:{port}",
                "admin.listen": f"127.0.0.1:{admin_port}",
                "store_url": f"sqlite:///{tmp_path / 'gateway.db'}",
            },
        )
        env = {**base_env(), "NOTIFY_SOCKET": address}
        process = ManagedProcess(
            "gateway", gateway_command("run", "--config", str(config)), env, tmp_path
        ).start()
        popen = process.process
        assert popen is not None
        try:
            ready = receive(sock)
            # Checked the moment the message arrives: systemd would start dependants now.
            listening = accepts(port), accepts(admin_port)
            assert "1" == ready.get("READY"), ready
            assert (True, True) == listening, process.logs()
            assert f"serving on 127.0.0.1:{port}" in ready["STATUS"]

            popen.send_signal(signal.SIGHUP)
            reloading = receive(sock)
            assert "1" == reloading.get("RELOADING"), reloading
            assert int(reloading["MONOTONIC_USEC"]) > 0
            assert "1" == receive(sock).get("READY")

            popen.send_signal(signal.SIGTERM)
            stopping = receive(sock)
            assert "1" == stopping.get("STOPPING"), stopping
            assert "SIGTERM" in stopping["STATUS"]
            assert 0 == popen.wait(timeout=MESSAGE_TIMEOUT), process.logs()
        finally:
            process.stop()
