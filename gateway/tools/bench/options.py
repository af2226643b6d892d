"""What a benchmark run is asked to do (`BenchOptions`), how it fails (`BenchError`), and its
progress lines on stderr (`say`)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from gateway.tools.children import ToolError

DEFAULT_DURATION_S: Final = 10.0
DEFAULT_CONNECTIONS: Final = 64
#: drain: submissions queued before the unthrottled run; the throttled run's rate.
DEFAULT_BACKLOG: Final = 20_000
DEFAULT_RATE: Final = 500.0
#: memory: submissions queued, and idle client connections held open.
DEFAULT_QUEUED: Final = 1_000_000
DEFAULT_OPEN_CONNECTIONS: Final = 10_000


class BenchError(ToolError):
    """The benchmark cannot run or its result cannot be trusted; the message says why."""


GroupCommitChoice = Literal["on", "off", "both"]


@dataclass(frozen=True, slots=True)
class BenchOptions:
    scenario: str
    duration_s: float = DEFAULT_DURATION_S
    connections: int = DEFAULT_CONNECTIONS
    group_commit: GroupCommitChoice = "both"
    #: Parent of the per-run temporary directories; None picks a local disk.
    store_parent: Path | None = None
    keep: bool = False
    #: Use the asyncio generator even when wrk is installed.
    builtin_generator: bool = False
    #: durable-accept: also measure on PostgreSQL, in a scratch database on the server whose
    #: maintenance database this URL names; None measures SQLite only.
    postgres: str | None = None
    #: drain: queued submissions the unthrottled run delivers (the throttled run delivers what
    #: `rate` does in `duration_s`, at most this many).
    backlog: int = DEFAULT_BACKLOG
    #: drain: the throttled run's `outbox.dispatcher.rate` (deliveries per second).
    rate: float = DEFAULT_RATE
    #: memory: queued submissions in the store, and idle client connections held open.
    queued: int = DEFAULT_QUEUED
    open_connections: int = DEFAULT_OPEN_CONNECTIONS


def say(text: str) -> None:
    """A progress line on stderr (stdout is the report's)."""
    print(f"invoice-gateway bench: {text}", file=sys.stderr, flush=True)
