"""Telling the service manager (systemd) what state the gateway is in: the notification
protocol of sd_notify(3), spoken directly — one datagram of `KEY=value` lines to the Unix socket
named by `$NOTIFY_SOCKET`.

With `Type=notify`, `systemctl start` returns once the gateway says `READY=1` (both listeners
are up), `systemctl reload` shows `reloading` until the reload is done, and `systemctl stop`
shows `deactivating` from the first signal. Without `$NOTIFY_SOCKET` (not started by systemd)
every call does nothing. A socket that cannot be reached is logged once and otherwise ignored:
the service manager's view is never a reason for the gateway to stop serving.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from typing import Final

import structlog

__all__ = ["NOTIFY_SOCKET_ENV", "ServiceManager"]

log = structlog.get_logger("gateway.service_manager")

NOTIFY_SOCKET_ENV: Final = "NOTIFY_SOCKET"


class ServiceManager:
    """The service manager at `address` (`$NOTIFY_SOCKET`: a path, or `@name` for an abstract
    socket), or none."""

    def __init__(self, address: str | None) -> None:
        self._named = address
        self._address = _socket_address(address) if address else None
        self._warned = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> ServiceManager:
        return cls(environ.get(NOTIFY_SOCKET_ENV))

    @property
    def present(self) -> bool:
        return self._address is not None

    def ready(self, status: str) -> None:
        """Serving: start-up, or a reload, is done."""
        self.notify(READY="1", STATUS=status)

    def reloading(self) -> None:
        """A reload has begun (`ready` ends it). systemd wants the monotonic clock's time with
        it, in microseconds, to tell this reload from an earlier one."""
        self.notify(RELOADING="1", MONOTONIC_USEC=str(time.monotonic_ns() // 1000))

    def stopping(self, status: str) -> None:
        self.notify(STOPPING="1", STATUS=status)

    def notify(self, **fields: str) -> None:
        if self._address is None:
            return
        message = "".join(f"{key}={value}\n" for key, value in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self._address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning(
                    "the service manager cannot be told the gateway's state; systemd may "
                    f"think it is not ready (is ${NOTIFY_SOCKET_ENV} right?)",
                    address=self._named,
                    error=str(exc),
                )


def _socket_address(address: str) -> str | bytes:
    """A path as it is; `@name` is the abstract socket `\\0name` (Linux)."""
    if address.startswith("@"):
        return b"\0" + address[1:].encode()
    return address
