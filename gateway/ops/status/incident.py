"""The incident line: one sentence on-call puts at the top of `/status` for everyone who opens it
(say, that the platform is down and invoices will be issued once it is back), and the recent
lines for the JSON feed.

The line lives in the audit log, not in a table of its own: setting it records an entry
`status.incident.set` with the message in its details, clearing it records
`status.incident.clear`, and the line shown is the latest such entry (nothing after a clear).
So every replica on the same store shows the same line, a restart keeps it, and the audit log
says who set each line and when.

IncidentBoard   what this replica knows of those entries: read from the store when the status
                page samples (`follow`), at once for a change made here (`apply`)
incident_message the rules of a line: a single line of at most `MAX_CHARS` characters
"""

from __future__ import annotations

import asyncio
import unicodedata
from collections.abc import Sequence
from typing import Any, Final, Protocol

import structlog

from gateway.clock import iso_utc
from gateway.errors import StoreError
from gateway.outbox.submissions import AuditEntry

SET: Final = "status.incident.set"
CLEAR: Final = "status.incident.clear"
ACTIONS: Final = (SET, CLEAR)
#: The longest line (characters, not bytes: a Chinese sentence counts each character once).
MAX_CHARS: Final = 280
#: How many past lines the board keeps (the feed's `incidents`).
RECENT: Final = 10
#: Audit entries read per store call.
PAGE: Final = 200
#: The first read goes back at most this many audit entries looking for lines: a line set
#: longer ago than that, with no other line since, is not found (and not shown).
MAX_SCAN: Final = 20_000

log = structlog.get_logger("gateway.ops.status")


class AuditLog(Protocol):
    """What the board reads (`OutboxStore` provides it)."""

    async def audit_log(
        self, *, limit: int, cursor: str | None
    ) -> tuple[list[AuditEntry], str | None]: ...


def incident_message(text: object) -> str:
    """`text` as an incident line, stripped; `ValueError` saying what is wrong otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"must be a string, got {type(text).__name__}")
    message = text.strip()
    if not message:
        raise ValueError("is empty; say what is going on (clear the line to remove it)")
    if len(message) > MAX_CHARS:
        raise ValueError(f"is {len(message)} characters long; at most {MAX_CHARS}")
    if any(unicodedata.category(char) == "Cc" for char in message):
        raise ValueError("must be a single line without control characters")
    return message


def _message(entry: AuditEntry) -> str | None:
    message = (entry.details or {}).get("message")
    return message if isinstance(message, str) else None


class IncidentBoard:
    """The incident entries of the audit log this replica has read, newest `RECENT` lines and
    what came after them. Without a log (tests, a page on its own) it only knows `apply`."""

    def __init__(self, log: AuditLog | None) -> None:
        self._log = log
        self._entries: dict[int, AuditEntry] = {}
        #: The highest sequence number read from the log (None before the first read).
        self._seen: int | None = None
        self._lock = asyncio.Lock()
        self._failing = False

    async def follow(self) -> None:
        """`refresh` for the background sampler: while the store cannot be read the line last
        read stays shown, and that is logged once, not at every try."""
        try:
            await self.refresh()
        except StoreError as exc:
            if not self._failing:
                log.warning(
                    "cannot read the incident line from the audit log; showing the last one read",
                    error=str(exc),
                )
            self._failing = True
        else:
            if self._failing:
                log.info("the incident line is read from the audit log again")
            self._failing = False

    async def refresh(self) -> None:
        """Read the entries recorded since the last read. The first read goes back until it
        found `RECENT` lines (or read `MAX_SCAN` entries, or the whole log); later reads stop at
        the first page reaching what was read before, so an entry recorded a moment late with
        a lower number (PostgreSQL) is still found while it is on that page."""
        if self._log is None:
            return
        async with self._lock:
            known, cursor, scanned, lines = self._seen, None, 0, 0
            while True:
                entries, cursor = await self._log.audit_log(limit=PAGE, cursor=cursor)
                for entry in entries:
                    if entry.action in ACTIONS:
                        self._entries[entry.seq] = entry
                        lines += entry.action == SET
                    self._seen = max(self._seen or 0, entry.seq)
                scanned += len(entries)
                if cursor is None or not entries:
                    break
                if known is None and (lines >= RECENT or scanned >= MAX_SCAN):
                    break
                if known is not None and entries[-1].seq <= known:
                    break
            self._prune()

    def apply(self, entry: AuditEntry) -> None:
        """Show an entry just recorded here without waiting for the next read."""
        if entry.action in ACTIONS:
            self._entries[entry.seq] = entry
            self._prune()

    def current(self) -> dict[str, Any] | None:
        """The line shown now (`incidents()`' first while not cleared), or None."""
        lines = self.incidents()
        return lines[0] if lines and lines[0]["cleared_at"] is None else None

    def incidents(self) -> list[dict[str, Any]]:
        """The recent lines, newest first: the message, when and by whom it was set, and when
        and by whom it was cleared or replaced by the next line (None while shown)."""
        ordered = self._ordered()
        lines = []
        for i, entry in enumerate(ordered):
            message = _message(entry)
            if entry.action != SET or message is None:
                continue
            ended = ordered[i + 1] if i + 1 < len(ordered) else None
            lines.append(
                {
                    "message": message,
                    "set_at": iso_utc(entry.at),
                    "set_by": entry.actor,
                    "cleared_at": iso_utc(ended.at) if ended else None,
                    "cleared_by": ended.actor if ended else None,
                }
            )
        return lines[::-1]

    def _ordered(self) -> Sequence[AuditEntry]:
        return [self._entries[seq] for seq in sorted(self._entries)]

    def _prune(self) -> None:
        ordered = self._ordered()
        sets = [i for i, entry in enumerate(ordered) if entry.action == SET]
        first = sets[-RECENT] if len(sets) >= RECENT else (sets[0] if sets else len(ordered))
        for entry in ordered[:first]:
            del self._entries[entry.seq]
