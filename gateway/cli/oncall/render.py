"""How the on-call CLI shows answers: rich tables for people, one JSON value a line for scripts.

Results go to stdout; notes, progress bars and errors go to stderr, so `--json` output (and an
export written to stdout) stays clean for a pipe.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, TextIO

from rich.console import Console, Group, JustifyMethod, RenderableType
from rich.json import JSON
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

#: Width for tables when stdout is not a terminal: ids and operation names are long, and a pipe
#: (less, grep, a ticket) is better served by long lines than by wrapped cells.
PIPE_WIDTH: Final = 220

STATE_STYLES: Final = {
    "queued": "cyan",
    "delivering": "cyan",
    "delivered": "green",
    "failed": "red",
    "unknown": "yellow",
    "dead": "bold red",
    "discarded": "dim",
    "issue_failed": "bold red",
    "issued_manually": "magenta",
}
CIRCUIT_STYLES: Final = {
    "closed": "green",
    "half_open": "yellow",
    "open": "bold red",
    "forced_open": "bold red",
    "forced_closed": "bold yellow",
}


def _console(file: TextIO) -> Console:
    terminal = file.isatty()
    return Console(file=file, highlight=False, width=None if terminal else PIPE_WIDTH)


class Output:
    """Where a command writes: `result` and `json` to stdout, `note` and `error` to stderr."""

    def __init__(
        self, *, json_mode: bool, stdout: TextIO | None = None, stderr: TextIO | None = None
    ) -> None:
        self.json_mode = json_mode
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.console = _console(self.stdout)
        self.err_console = _console(self.stderr)

    def json(self, value: Any) -> None:
        """One JSON value on one line."""
        self.stdout.write(json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n")
        self.stdout.flush()

    def result(self, renderable: RenderableType) -> None:
        if self.console.is_terminal:
            self.console.print(renderable)
            return
        # Cells are padded to their column's width; in a file or a pipe that is only noise.
        with self.console.capture() as captured:
            self.console.print(renderable)
        lines = captured.get().splitlines()
        self.stdout.write("".join(line.rstrip() + "\n" for line in lines))
        self.stdout.flush()

    def show(self, value: Any, view: Callable[[Any], RenderableType]) -> None:
        """`value` as one JSON line in JSON mode, else as `view` renders it for people."""
        if self.json_mode:
            self.json(value)
        else:
            self.result(view(value))

    def note(self, message: str) -> None:
        """Something a person should know that is not the result (hints, summaries)."""
        if not self.json_mode:
            self.err_console.print(Text(message, style="dim"))

    def error(self, message: str) -> None:
        self.stderr.write(f"invoice-gateway: {message}\n")
        self.stderr.flush()

    def progress(self, description: str) -> Progress:
        """A progress bar on stderr, shown only when stderr is a terminal."""
        return Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.err_console,
            transient=False,
            disable=not self.err_console.is_terminal,
        )


# -- submissions --------------------------------------------------------------------------------


def state_text(state: str | None) -> Text:
    return Text(str(state or "?"), style=STATE_STYLES.get(str(state), ""))


def short_time(iso: Any) -> str:
    """`2026-11-27T19:12:38.123Z` → `2026-11-27 19:12:38Z`: seconds are enough in a table."""
    if not isinstance(iso, str) or not iso:
        return ""
    head = iso.split(".")[0].replace("T", " ")
    return head if head.endswith("Z") else head + "Z"


def last_error(summary: Mapping[str, Any]) -> str:
    error_class = summary.get("last_error_class")
    error = summary.get("last_error")
    if error_class and error:
        return f"{error_class}: {error}"
    return str(error_class or error or "")


_SUBMISSION_COLUMNS: Final = (
    "id",
    "state",
    "tenant",
    "operation",
    "business key",
    "attempts",
    "last error",
    "accepted",
)


def submissions_table(items: Iterable[Mapping[str, Any]], *, width: int | None = None) -> Table:
    """One row per submission. Within `width` the id, state, business key and time keep their
    full width (people copy them into commands); tenant, operation and last error give way."""
    rows = [
        (
            str(item.get("submission_id", "")),
            str(item.get("status") or "?"),
            str(item.get("tenant") or ""),
            str(item.get("operation") or ""),
            str(item.get("business_key") or ""),
            str(item.get("attempts", "")),
            last_error(item),
            short_time(item.get("accepted_at")),
        )
        for item in items
    ]
    headers = _SUBMISSION_COLUMNS
    natural = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]
    natural[6] = min(natural[6], 60)
    widths = _fit(natural, flexible=(2, 3, 6), room=width) if width else natural
    table = Table(box=None, pad_edge=False, header_style="bold")
    for header, column_width in zip(headers, widths, strict=True):
        justify: JustifyMethod = "right" if header == "attempts" else "left"
        table.add_column(
            header, width=column_width, no_wrap=True, overflow="ellipsis", justify=justify
        )
    for row in rows:
        table.add_row(*row[:1], state_text(row[1]), *row[2:])
    return table


def _fit(natural: list[int], *, flexible: tuple[int, ...], room: int) -> list[int]:
    """Column widths that fit `room` (two spaces between columns) by narrowing only the
    `flexible` columns, each to no less than 8; the natural widths when they fit already."""
    gaps = 2 * (len(natural) - 1)
    excess = sum(natural) + gaps - room
    widths = list(natural)
    # Take from the widest flexible column first, one character at a time.
    while excess > 0:
        widest = max(flexible, key=lambda i: widths[i])
        if widths[widest] <= 8:
            break
        widths[widest] -= 1
        excess -= 1
    return widths


#: Fields of a submission shown as "key value" lines by `outbox show`, in this order.
_DETAIL_FIELDS: Final = (
    ("submission_id", "id"),
    ("status", "state"),
    ("tenant", "tenant"),
    ("operation", "operation"),
    ("business_key", "business key"),
    ("idempotency_key", "idempotency key"),
    ("attempts", "attempts"),
    ("maybe_sent", "maybe sent"),
    ("last_error_class", "last error class"),
    ("last_error", "last error"),
    ("accepted_at", "accepted"),
    ("updated_at", "updated"),
    ("next_attempt_at", "next attempt"),
    ("delivered_at", "delivered"),
    ("invoice_number", "invoice number"),
)
_SECTIONS: Final = ("payload", "headers", "result", "response")


def submission_detail(submission: Mapping[str, Any]) -> RenderableType:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    shown = {key for key, _ in _DETAIL_FIELDS} | set(_SECTIONS)
    for key, label in _DETAIL_FIELDS:
        value = submission.get(key)
        if value is None or value == "":
            continue
        grid.add_row(label, state_text(value) if key == "status" else str(value))
    for key, value in submission.items():
        if key not in shown and value not in (None, "", [], {}):
            grid.add_row(key.replace("_", " "), _compact(value))
    parts: list[RenderableType] = [grid]
    for section in _SECTIONS:
        value = submission.get(section)
        if value in (None, "", [], {}):
            continue
        parts.append(Text(f"\n{section}", style="bold"))
        parts.append(
            _headers(value) if section == "headers" else JSON.from_data(value, ensure_ascii=False)
        )
    return Group(*parts)


def _headers(value: Any) -> RenderableType:
    """Request headers, stored as [name, value] pairs, as `Name: value` lines."""
    if not isinstance(value, list) or not all(
        isinstance(pair, list) and len(pair) == 2 for pair in value
    ):
        return JSON.from_data(value)
    return Text("\n".join(f"{name}: {text}" for name, text in value))


def action_summary(verb: str, submission: Mapping[str, Any]) -> Text:
    """`replayed sub_… : now queued` after a one-submission action."""
    text = Text(f"{verb} {submission.get('submission_id', '?')}: now ")
    text.append_text(state_text(submission.get("status")))
    return text


# -- jobs, dispatcher, circuit, audit -------------------------------------------------------------


def job_summary(job: Mapping[str, Any]) -> str:
    state = job.get("state")
    done, skipped, total = job.get("done", 0), job.get("skipped", 0), job.get("total", 0)
    line = f"bulk replay {job.get('job_id', '?')} {state}: {done} of {total} replayed"
    if skipped:
        line += f", {skipped} skipped (no longer replayable)"
    if job.get("error"):
        line += f"; error: {job['error']}"
    return line


def dispatcher_summary(dispatcher: Mapping[str, Any]) -> RenderableType:
    paused = bool(dispatcher.get("paused"))
    stopped = dispatcher.get("running") is False
    text = Text("dispatcher ")
    if stopped:
        text.append("stopped", style="bold red")
    else:
        text.append("paused" if paused else "running", style="bold yellow" if paused else "green")
    text.append(f", {dispatcher.get('in_flight', 0)} in flight")
    stats = dispatcher.get("stats")
    if isinstance(stats, Mapping) and stats:
        text.append("\n" + "  ".join(f"{key} {value}" for key, value in stats.items()), style="dim")
    return text


def circuit_view(circuit: Mapping[str, Any]) -> RenderableType:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("breaker", "state", "since", "reason", "retry in", "failures", "window"):
        table.add_column(column, no_wrap=column != "reason")
    breakers: Sequence[Mapping[str, Any]] = circuit.get("breakers") or []
    for breaker in breakers:
        state = str(breaker.get("state", "?"))
        rate = breaker.get("window_failure_rate")
        window = f"{breaker.get('window_calls', 0)} calls"
        if rate is not None:
            window += f", {float(rate):.0%} failed"
        # Only a tripped breaker retries by itself; a forced one waits for `circuit reset`.
        retry_after = (breaker.get("retry_after") or 0) if state in ("open", "half_open") else 0
        table.add_row(
            str(breaker.get("name", "?")),
            Text(state, style=CIRCUIT_STYLES.get(state, "")),
            short_time(breaker.get("since")),
            str(breaker.get("reason") or ""),
            f"{float(retry_after):.1f}s" if retry_after else "",
            str(breaker.get("consecutive_failures", "")),
            window,
        )
    parts: list[RenderableType] = [
        table if breakers else Text("no breakers yet (no upstream call since start)", "dim")
    ]
    health = circuit.get("health")
    if isinstance(health, Mapping) and health:
        status = str(health.get("status", "unknown"))
        line = Text("\nupstream health ")
        line.append(status, style={"up": "green", "down": "bold red"}.get(status, "yellow"))
        if health.get("since"):
            line.append(f" since {short_time(health['since'])}")
        details = [
            f"{key.replace('_', ' ')} {value}"
            for key, value in health.items()
            if key not in ("status", "since") and value is not None
        ]
        if details:
            line.append("\n" + "  ".join(details), style="dim")
        parts.append(line)
    return Group(*parts)


def token_view(token: Mapping[str, Any]) -> RenderableType:
    """The platform access token, the token calls and the hold on the next one, if any; then the
    same for each tenant with a platform identity of its own."""
    text = Text()
    if token.get("tenant"):
        text.append(f"tenant    {token['tenant']} ({token.get('grant', '?')})\n", style="bold")
    _token_lines(text, token, token.get("tenant"))
    tenants = token.get("tenants")
    if isinstance(tenants, Mapping):
        for tenant, state in sorted(tenants.items()):
            if isinstance(state, Mapping):
                text.append(f"\n\ntenant    {tenant} ({state.get('grant', '?')})", style="bold")
                text.append("\n")
                _token_lines(text, state, str(tenant))
    return text


def _token_lines(text: Text, token: Mapping[str, Any], tenant: str | None = None) -> None:
    text.append("token     ")
    held = token.get("token")
    if isinstance(held, Mapping):
        text.append("obtained ", style="green")
        text.append(
            f"{short_time(held.get('obtained_at'))}, expires {short_time(held.get('expires_at'))}"
        )
    else:
        text.append("none", style="yellow")
    text.append(f"\nendpoint  {token.get('token_url', '?')}")
    calls = token.get("calls")
    if isinstance(calls, Mapping):
        text.append(
            f"\ncalls     {calls.get('last_hour')} in the last hour (at most "
            f"{calls.get('per_hour')}), {calls.get('last_day')} in 24 hours (at most "
            f"{calls.get('per_day')}), {calls.get('last_30_days')} in 30 days (the platform "
            "allows about 50)"
        )
    hold = token.get("hold")
    if isinstance(hold, Mapping):
        text.append("\nheld      ")
        text.append(str(hold.get("cause", "?")), style="bold red")
        text.append(f" since {short_time(hold.get('since'))}")
        if hold.get("until"):
            text.append(f", until {short_time(hold.get('until'))}")
        if hold.get("operator_may_end"):
            option = f" --tenant {tenant}" if tenant else ""
            text.append(f" (`invoice-gateway token refresh{option}` ends it)")
        text.append(f"\n          {hold.get('reason', '')}", style="dim")
    else:
        text.append("\nheld      no: a token may be asked for when needed", style="dim")


def incident_view(answer: Mapping[str, Any]) -> RenderableType:
    """The line `/status` shows now, as plain text (never read as markup)."""
    incident = answer.get("incident")
    if not isinstance(incident, Mapping):
        return Text("no line shown on /status", "dim")
    text = Text("shown on /status: ", "bold")
    text.append(str(incident.get("message", "")))
    text.append(
        f"\nset {short_time(incident.get('set_at'))} by {incident.get('set_by', '?')}", "dim"
    )
    return text


def callback_table(answer: Mapping[str, Any]) -> RenderableType:
    """Callback events, newest first (docs/callbacks.md)."""
    items = list(answer.get("items") or [])
    if not items:
        return Text("no callback events", "dim")
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("id", "created", "tenant", "type", "state", "attempts", "submission"):
        table.add_column(column, no_wrap=True)
    table.add_column("last error", max_width=50, overflow="ellipsis", no_wrap=True)
    for event in items:
        table.add_row(
            str(event.get("id", "")),
            short_time(event.get("created_at")),
            str(event.get("tenant", "")),
            str(event.get("type", "")),
            str(event.get("state", "")),
            str(event.get("attempts", "")),
            str(event.get("submission_id", "")),
            Text(str(event.get("last_error") or "")),
        )
    return table


def callback_view(event: Mapping[str, Any]) -> RenderableType:
    """One event after a replay."""
    text = Text(f"{event.get('id')} ", "bold")
    text.append(f"{event.get('type')} for {event.get('submission_id')}: {event.get('state')}")
    text.append(f", attempts {event.get('attempts')}", "dim")
    return text


def audit_table(items: Iterable[Mapping[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("seq", justify="right", no_wrap=True)
    table.add_column("at", no_wrap=True)
    table.add_column("actor", no_wrap=True)
    table.add_column("action", no_wrap=True)
    table.add_column("submissions", max_width=40, overflow="ellipsis", no_wrap=True)
    table.add_column("reason", max_width=50, overflow="fold")
    table.add_column("details", max_width=60, overflow="ellipsis", no_wrap=True)
    for entry in items:
        ids = list(entry.get("submission_ids") or [])
        submissions = ", ".join(ids[:3]) + (f" (+{len(ids) - 3})" if len(ids) > 3 else "")
        table.add_row(
            str(entry.get("seq", "")),
            short_time(entry.get("at")),
            f"{entry.get('actor', '?')} ({entry.get('role', '?')})",
            str(entry.get("action", "")),
            submissions,
            str(entry.get("reason") or ""),
            _compact(entry.get("details") or ""),
        )
    return table


def _compact(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
