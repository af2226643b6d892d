"""Logging a store that stops answering: once when it starts, once when it ends (`StoreOutage`),
for every background task that calls the store on its own (dispatcher, issuance follower, the
metrics sampler)."""

from __future__ import annotations

from typing import Any

from gateway.clock import Clock
from gateway.errors import StoreError

__all__ = ["StoreOutage"]


class StoreOutage:
    """Whether the store answers, as the background task `task` sees it, logged on `logger` when
    that changes: a warning naming the error when a call first fails, a note saying how long it
    was down when one succeeds again; nothing for the calls that fail in between, and never a
    traceback (a store that does not answer is not a bug)."""

    def __init__(self, logger: Any, clock: Clock, *, task: str, stops: str) -> None:
        """`stops` says what stops meanwhile ("nothing is claimed or delivered")."""
        self._log = logger
        self._clock = clock
        self._task = task
        self._stops = stops
        self._since: float | None = None

    def failed(self, exc: StoreError) -> None:
        if self._since is None:
            self._since = self._clock.monotonic()
            self._log.warning(
                f"the outbox store does not answer; {self._stops} until it does, trying again "
                "meanwhile",
                task=self._task,
                error=str(exc),
            )

    def answered(self) -> None:
        if self._since is not None:
            down_s = self._clock.monotonic() - self._since
            self._since = None
            self._log.info(
                "the outbox store answers again", task=self._task, down_s=round(down_s, 1)
            )
