"""The notification protocol's edges: an abstract socket, no service manager, and one that
cannot be reached (logged once, never raised)."""

from __future__ import annotations

import os
import socket
import tempfile

from structlog.testing import capture_logs

from gateway.ops.service_manager import ServiceManager


def test_an_abstract_socket_receives_the_fields_as_lines() -> None:
    name = f"gw-notify-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        manager = ServiceManager.from_environment({"NOTIFY_SOCKET": f"@{name}"})
        manager.ready("serving")
        assert b"READY=1\nSTATUS=serving\n" == sock.recv(4096)
    assert manager.present


def test_without_a_service_manager_nothing_is_sent_or_logged() -> None:
    manager = ServiceManager.from_environment({})
    with capture_logs() as logs:
        manager.ready("serving")
        manager.stopping("stopping")
    assert not manager.present
    assert [] == logs


def test_a_socket_that_is_gone_is_logged_once_and_never_raised() -> None:
    missing = os.path.join(tempfile.gettempdir(), f"gw-notify-missing-{os.getpid()}")
    manager = ServiceManager(missing)
    with capture_logs() as logs:
        manager.ready("serving")
        manager.reloading()
        manager.stopping("stopping")
    assert 1 == len(logs), logs
    assert missing == logs[0]["address"]
    assert "service manager" in logs[0]["event"]
