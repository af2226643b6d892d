"""`invoice-gateway outbox …`, `circuit …`, `status …` and `token …`: the admin API for people
on call.

Each command is one function `(Context) -> exit code`; `configure_outbox`, `configure_circuit`,
`configure_status` and `configure_token` build the argparse tree and wrap every command so that
an `AdminApiError` becomes its message on stderr and its exit code, whatever the command was
doing.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO, Final

from rich.text import Text

from gateway.cli.oncall.client import (
    DEFAULT_ADMIN_URL,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    AdminApiError,
    AdminAuthError,
    AdminClient,
    AdminUnreachable,
)
from gateway.cli.oncall.render import (
    Output,
    action_summary,
    audit_table,
    callback_table,
    callback_view,
    circuit_view,
    dispatcher_summary,
    incident_view,
    job_summary,
    submission_detail,
    submissions_table,
    token_view,
)
from gateway.clock import iso_utc
from gateway.config import ADMIN_TOKEN_ENV
from gateway.errors import GatewayError
from gateway.outbox.manual import FORMATS, write_csv, write_xlsx
from gateway.outbox.submissions import MARKABLE_STATES, SubmissionState
from gateway.quantities import duration, parse_duration, whole_number

URL_ENV: Final = "GATEWAY_ADMIN_URL"
TOKEN_ENV: Final = ADMIN_TOKEN_ENV
DEFAULT_TIMEOUT: Final = 10.0
#: The admin API's largest page.
MAX_PAGE: Final = 500
#: How long to wait, after asking a bulk job to cancel, for it to say it stopped.
CANCEL_WAIT_S: Final = 5.0

EXIT_CODES_EPILOG: Final = f"""\
exit status (scripts can rely on it):
  0  success
  1  the gateway refused or failed the action (e.g. 409: not possible in the
     submission's state), or a bulk replay was cancelled or failed
  2  usage error: a missing or bad option, force-resend without --yes
  3  cannot reach the gateway admin API: not running, wrong --url, no answer in time
  4  authentication or authorization failed: no or wrong token (401), or a
     viewer token on an operator action (403)

environment:
  {URL_ENV}    admin API base URL (default {DEFAULT_ADMIN_URL})
  {TOKEN_ENV}  bearer token for the admin API (or --token-file PATH)

runbook: docs/runbook.md"""

_STATES: Final = tuple(state.value for state in SubmissionState)


class UsageError(GatewayError):
    """The command line asks for something that cannot be done as given (exit 2)."""


@dataclass
class Context:
    """What a command works with: its arguments, its output, and (on first use) the client."""

    args: argparse.Namespace
    out: Output

    @cached_property
    def client(self) -> AdminClient:
        url = self.args.url or os.environ.get(URL_ENV) or DEFAULT_ADMIN_URL
        try:
            return AdminClient(url, _token(self.args), timeout=self.args.timeout)
        except ValueError as exc:
            raise UsageError(f"--url: {exc}") from None


Command = Callable[[Context], int]


def _token(args: argparse.Namespace) -> str:
    if args.token_file:
        path = Path(args.token_file)
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise UsageError(f"cannot read --token-file {path}: {exc.strerror or exc}") from None
        if not token:
            raise UsageError(f"--token-file {path} is empty")
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise AdminAuthError(
            f"no admin token: set {TOKEN_ENV} (or pass --token-file PATH) to a token from the "
            "gateway's admin.tokens"
        )
    return token


def _wrap(command: Command) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        context = Context(args, Output(json_mode=args.json))
        try:
            return command(context)
        except UsageError as exc:
            context.out.error(str(exc))
            return EXIT_USAGE
        except AdminApiError as exc:
            context.out.error(str(exc))
            return exc.exit_code
        except KeyboardInterrupt:
            context.out.error(
                "interrupted; an action already sent may have been applied: look before repeating"
            )
            return EXIT_FAILURE
        except BrokenPipeError:
            # The reader went away (`… --json | head`): stop quietly, and keep Python from
            # complaining again when it flushes stdout on exit.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return EXIT_FAILURE

    handler.__doc__ = command.__doc__
    return handler


# -- argument types -----------------------------------------------------------------------------


_positive_duration = duration(0, above=True)


_positive_int = whole_number(1)


def _states(text: str) -> list[str]:
    states = [part.strip().lower() for part in text.split(",") if part.strip()]
    for state in states:
        if state not in _STATES:
            raise argparse.ArgumentTypeError(
                f"unknown state {state!r} (one of {', '.join(_STATES)})"
            )
    return states


def parse_when(text: str, *, now: datetime | None = None) -> str:
    """`--since`/`--until`: unix seconds; a duration ago (`30m`, `2h`, `3d`); or ISO 8601 (UTC
    unless an offset is given). Returned as ISO 8601 UTC, which the admin API takes."""
    now = now or datetime.now(UTC)
    text = text.strip()
    with contextlib.suppress(ValueError, OverflowError, OSError):
        return iso_utc(float(text))
    with contextlib.suppress(ValueError):
        return iso_utc(now.timestamp() - parse_duration(text))
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: use 30m / 2h / 3d (ago), unix seconds, or ISO 8601 "
            "like 2026-11-27T09:00:00Z"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return iso_utc(moment.timestamp())


def _reason(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("say why, for the audit log (it cannot be blank)")
    return text.strip()


def parse_assignment(text: str) -> tuple[str, Any]:
    """`--set /order/buyerTaxNum=VALUE`: the pointer, and VALUE as JSON if it parses, else text."""
    pointer, sep, raw = text.partition("=")
    if not sep or not pointer.startswith("/"):
        raise argparse.ArgumentTypeError(
            f"expected POINTER=VALUE with a JSON pointer like /order/buyerTaxNum, got {text!r}"
        )
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return pointer, value


# -- filters ------------------------------------------------------------------------------------

#: (argparse dest, admin API key), in the order they go on the wire.
_FILTER_KEYS: Final = (
    ("state", "state"),
    ("tenant", "tenant"),
    ("operation", "operation"),
    ("error_class", "error_class"),
    ("since", "accepted_after"),
    ("until", "accepted_before"),
    ("search", "q"),
)


def filters_of(args: argparse.Namespace) -> dict[str, str]:
    """The filter options given, keyed as the admin API names them (states comma-joined)."""
    filters: dict[str, str] = {}
    for dest, key in _FILTER_KEYS:
        value = getattr(args, dest, None)
        if dest == "state" and value:
            value = ",".join(dict.fromkeys(state for group in value for state in group))
        if value:
            filters[key] = str(value)
    return filters


def _add_filters(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("filters (all optional, combined with AND)")
    group.add_argument(
        "--state",
        action="append",
        type=_states,
        metavar="STATE[,STATE]",
        help=f"lifecycle state; repeat or comma-separate ({', '.join(_STATES)})",
    )
    group.add_argument("--tenant", metavar="ID", help="tenant id")
    group.add_argument(
        "--operation", metavar="NAME", help="operation, e.g. nuonuo.….requestBilling"
    )
    group.add_argument(
        "--error-class", metavar="CLASS", help="last failure class, e.g. upstream_unavailable"
    )
    group.add_argument(
        "--since",
        type=parse_when,
        metavar="WHEN",
        help="accepted at or after: 30m, 2h, 3d (ago), unix seconds, or ISO 8601 (UTC)",
    )
    group.add_argument(
        "--until", type=parse_when, metavar="WHEN", help="accepted before (as --since)"
    )
    group.add_argument(
        "--search", metavar="TEXT", help="substring of the business key (order number)"
    )


# -- outbox: reading ------------------------------------------------------------------------------


def cmd_list(ctx: Context) -> int:
    """Submissions matching the filters, newest first."""
    args, out = ctx.args, ctx.out
    filters = list(filters_of(args).items())
    wanted: int | None = None if args.all else args.limit
    rows: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        size = MAX_PAGE if wanted is None else min(MAX_PAGE, wanted - len(rows))
        page = ctx.client.list_submissions(filters, limit=size, cursor=cursor)
        items = [item for item in page.get("items") or [] if isinstance(item, dict)]
        if out.json_mode:
            for item in items:
                out.json(item)
        rows.extend(items)
        cursor = page.get("next_cursor")
        if not cursor or not items or (wanted is not None and len(rows) >= wanted):
            break
    if out.json_mode:
        return EXIT_OK
    if not rows:
        out.note("no submissions match")
        return EXIT_OK
    out.result(submissions_table(rows, width=out.console.width))
    if cursor:
        total = ctx.client.count(filters)
        out.note(f"showing the newest {len(rows)} of {total}; --limit N or --all for more")
    return EXIT_OK


def cmd_show(ctx: Context) -> int:
    """One submission with its payload, headers and the platform's answer."""
    submission = ctx.client.submission(ctx.args.id)
    ctx.out.show(submission, submission_detail)
    return EXIT_OK


def cmd_audit(ctx: Context) -> int:
    """Who did what to which submissions, and why; newest first."""
    rows: list[dict[str, Any]] = []
    cursor: str | None = None
    while len(rows) < ctx.args.limit:
        page = ctx.client.audit(limit=min(MAX_PAGE, ctx.args.limit - len(rows)), cursor=cursor)
        items = [item for item in page.get("items") or [] if isinstance(item, dict)]
        rows.extend(items)
        cursor = page.get("next_cursor")
        if not cursor or not items:
            break
    if ctx.out.json_mode:
        for row in rows:
            ctx.out.json(row)
    elif rows:
        ctx.out.result(audit_table(rows))
    else:
        ctx.out.note("the audit log is empty")
    return EXIT_OK


# -- outbox: acting on one submission -------------------------------------------------------------


def _show_action(ctx: Context, verb: str, submission: dict[str, Any]) -> int:
    ctx.out.show(submission, lambda shown: action_summary(verb, shown))
    return EXIT_OK


def cmd_requeue(ctx: Context) -> int:
    """A dead submission starts afresh: attempts and age count from now."""
    submission = ctx.client.act(ctx.args.id, "requeue", {"reason": ctx.args.reason})
    return _show_action(ctx, "requeued", submission)


def cmd_discard(ctx: Context) -> int:
    """Decide not to send a submission; it never reaches the platform."""
    submission = ctx.client.act(ctx.args.id, "discard", {"reason": ctx.args.reason})
    return _show_action(ctx, "discarded", submission)


def cmd_force_resend(ctx: Context) -> int:
    """Send a delivered submission again, on purpose."""
    if not ctx.args.yes:
        raise UsageError(
            f"force-resend sends {ctx.args.id}, which the platform already accepted, once more: "
            "it may create a SECOND INVOICE. Check on the platform first (docs/runbook.md, "
            "'We suspect a duplicate'); if you are sure, repeat with --yes"
        )
    body = {"reason": ctx.args.reason, "confirm": True}
    submission = ctx.client.act(ctx.args.id, "force-resend", body)
    return _show_action(ctx, "resending", submission)


def cmd_edit(ctx: Context) -> int:
    """Change one payload field before a replay; before and after go to the audit log."""
    pointer, value = ctx.args.set
    submission = ctx.client.edit(ctx.args.id, pointer, value, ctx.args.reason)
    if ctx.out.json_mode:
        ctx.out.json(submission)
        return EXIT_OK
    text = Text(f"set {pointer} = {json.dumps(value, ensure_ascii=False)}; ")
    text.append_text(action_summary("edited", submission))
    ctx.out.result(text)
    ctx.out.note(f"send it with: invoice-gateway outbox replay --id {ctx.args.id} --reason …")
    return EXIT_OK


# -- outbox: replay, one or in bulk ----------------------------------------------------------------


def cmd_replay(ctx: Context) -> int:
    """Replay one submission (--id) or every one matching the filters (as a job)."""
    args, out = ctx.args, ctx.out
    filters = filters_of(args)
    if args.id:
        if filters or args.dry_run:
            raise UsageError(
                "--id replays one submission; filters and --dry-run are for a bulk replay"
            )
        submission = ctx.client.act(args.id, "replay", {"reason": args.reason})
        return _show_action(ctx, "replayed", submission)
    if args.dry_run:
        answer = ctx.client.replay_count(filters, args.reason)
        if out.json_mode:
            out.json(answer)
        else:
            out.result(
                f"{answer['count']} submissions would be replayed "
                f"(filter: {json.dumps(answer.get('filter', filters), ensure_ascii=False)})"
            )
        return EXIT_OK
    if not filters:
        raise UsageError(
            "give --id ID, or at least one filter (e.g. --state dead); "
            "add --dry-run first to see how many match"
        )
    if not args.reason:
        raise UsageError("a bulk replay needs --reason REASON (it goes to the audit log)")
    started = ctx.client.start_replay(filters, args.reason)
    return _follow_job(ctx, str(started["job_id"]))


def _follow_job(ctx: Context, job_id: str) -> int:
    out, client = ctx.out, ctx.client
    out.note(f"bulk replay {job_id} started; Ctrl-C cancels it")
    job = client.job(job_id)
    with out.progress("replaying") as progress:
        task = progress.add_task("replaying", total=job.get("total") or None)
        try:
            while True:
                progress.update(
                    task,
                    total=job.get("total") or None,
                    completed=int(job.get("done", 0)) + int(job.get("skipped", 0)),
                )
                if job.get("state") != "running":
                    break
                time.sleep(ctx.args.poll_interval)
                job = client.job(job_id)
        except KeyboardInterrupt:
            progress.stop()
            return _cancel(ctx, job_id)
    if out.json_mode:
        out.json(job)
    else:
        out.result(job_summary(job))
    return EXIT_OK if job.get("state") == "done" else EXIT_FAILURE


def _cancel(ctx: Context, job_id: str) -> int:
    out, client = ctx.out, ctx.client
    try:
        job = client.cancel_job(job_id)
        deadline = time.monotonic() + CANCEL_WAIT_S
        while job.get("state") == "running" and time.monotonic() < deadline:
            time.sleep(min(ctx.args.poll_interval, 0.2))
            job = client.job(job_id)
    except AdminApiError as exc:
        out.error(
            f"interrupted, but cancelling bulk replay {job_id} failed ({exc}); it may still be "
            f"running: invoice-gateway outbox job {job_id} --cancel"
        )
        return EXIT_FAILURE
    if out.json_mode:
        out.json(job)
    out.error(
        f"cancelled bulk replay {job_id} ({job.get('state')}): {job.get('done', 0)} of "
        f"{job.get('total', '?')} were replayed before the cancel and stay replayed (the "
        "dispatcher sends them); the rest are untouched"
    )
    return EXIT_FAILURE


def cmd_job(ctx: Context) -> int:
    """A bulk job's progress; --cancel stops it."""
    if ctx.args.cancel:
        job = ctx.client.cancel_job(ctx.args.job_id)
    else:
        job = ctx.client.job(ctx.args.job_id)
    ctx.out.show(job, job_summary)
    return EXIT_OK


# -- outbox: export and import --------------------------------------------------------------------


def cmd_export(ctx: Context) -> int:
    """Submissions matching the filters as JSON Lines: masked, or (--unmasked, with a reason,
    audited) every field, a backup to keep."""
    out = ctx.out
    filters = list(filters_of(ctx.args).items())
    query = filters
    if ctx.args.unmasked:
        if not ctx.args.reason:
            raise UsageError("--unmasked needs --reason (why; recorded in the audit log)")
        query = [*filters, ("unmasked", "1"), ("reason", ctx.args.reason)]
    target: str | None = ctx.args.output if ctx.args.output not in (None, "-") else None
    if target is None:
        count = _copy_export(ctx, query, sys.stdout.buffer, total=None, show=False)
        out.note(f"exported {count} submissions")
        return EXIT_OK
    path = Path(target)
    partial = path.with_name(path.name + ".partial")
    total = ctx.client.count(filters)
    try:
        with partial.open("wb") as sink:
            count = _copy_export(ctx, query, sink, total=total, show=True)
        os.replace(partial, path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise AdminApiError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        # A broken transfer must not leave a file that looks like a whole backup.
        partial.unlink(missing_ok=True)
        raise
    if out.json_mode:
        out.json({"exported": count, "file": str(path)})
    else:
        out.result(f"exported {count} submissions to {path}")
    return EXIT_OK


def _copy_export(
    ctx: Context,
    filters: Sequence[tuple[str, str]],
    sink: BinaryIO,
    *,
    total: int | None,
    show: bool,
) -> int:
    count = 0
    with ctx.client.export_lines(filters) as lines, ctx.out.progress("exporting") as progress:
        task = progress.add_task("exporting", total=total, visible=show)
        for line in lines:
            sink.write(line)
            count += 1
            if count % 100 == 0:
                progress.update(task, completed=count)
        progress.update(task, completed=count, total=max(count, total or 0))
    sink.flush()
    return count


def cmd_import(ctx: Context) -> int:
    """Load an export into the gateway's (empty) store."""
    source: str = ctx.args.file
    try:
        data = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror or exc}") from None
    imported = ctx.client.import_records(data)
    ctx.out.show({"imported": imported}, lambda _: f"imported {imported} submissions from {source}")
    return EXIT_OK


# -- outbox: issuing by hand during a long outage (docs/manual-issuance.md) -----------------------

#: The header `mark-issued --from-csv` reads: order number, then the portal's invoice number.
MARK_CSV_COLUMNS: Final = ("orderNo", "invoiceNumber")
_MARKABLE: Final = frozenset(state.value for state in MARKABLE_STATES)


def cmd_export_manual(ctx: Context) -> int:
    """Stuck invoices as the tax bureau portal's batch import takes them, personal data whole."""
    args, out = ctx.args, ctx.out
    path = Path(args.output)
    layout = args.format or ("xlsx" if path.suffix.lower() == ".xlsx" else "csv")
    answer = ctx.client.export_manual(filters_of(args), args.reason)
    columns = [str(column) for column in answer["columns"]]
    rows = [[str(cell) for cell in row] for row in answer["rows"] if isinstance(row, list)]
    write = write_xlsx if layout == "xlsx" else write_csv
    partial = path.with_name(path.name + ".partial")
    try:
        # Personal data whole: readable by its owner only.
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as sink:
            write(columns, rows, sink)
        os.replace(partial, path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise AdminApiError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        partial.unlink(missing_ok=True)  # no half-written copy of personal data left behind
        raise
    totals = answer.get("totals") or {}
    summary = (
        f"exported {totals.get('invoices', '?')} invoices, {totals.get('lines', len(rows))} "
        f"lines to {path} ({layout}): amount {totals.get('amount', '?')}, tax "
        f"{totals.get('tax', '?')}, total {totals.get('total', '?')} (yuan)"
    )
    # The totals go to stderr whatever the output mode: they are checked against the portal's.
    out.stderr.write(summary + "\n")
    for skipped in answer.get("skipped") or []:
        out.stderr.write(
            f"skipped {skipped.get('submission_id')} ({skipped.get('business_key')}): "
            f"{skipped.get('reason')}\n"
        )
    maybe_sent = answer.get("maybe_sent") or []
    if maybe_sent:
        out.stderr.write(
            f"WARNING: {len(maybe_sent)} of them may have reached the platform before it failed "
            "(the answer was lost), so the platform may have issued them already; look each up "
            f"on the platform before issuing it by hand: {', '.join(map(str, maybe_sent))}\n"
        )
    tenants = answer.get("tenants") or []
    if len(tenants) > 1:
        out.stderr.write(
            f"note: {len(tenants)} tenants ({', '.join(map(str, tenants))}): each issues its own "
            "invoices in its own portal account; export with --tenant for each\n"
        )
    out.stderr.flush()
    if out.json_mode:
        out.json({**totals, "file": str(path), "format": layout})
    return EXIT_OK


def cmd_mark_issued(ctx: Context) -> int:
    """Record that invoices were issued by hand in the tax bureau's portal."""
    args = ctx.args
    if args.from_csv:
        if args.id or args.invoice_number:
            raise UsageError("give ID with --invoice-number, or --from-csv FILE, not both")
        return _mark_from_csv(ctx, Path(args.from_csv))
    if not args.id or not args.invoice_number:
        raise UsageError(
            "give the submission ID and --invoice-number NUMBER, or --from-csv FILE "
            f"(header {','.join(MARK_CSV_COLUMNS)})"
        )
    submission = ctx.client.mark_issued(args.id, args.invoice_number, args.reason)
    return _show_action(ctx, f"marked issued by hand (invoice {args.invoice_number})", submission)


def read_mark_csv(path: Path) -> list[tuple[int, str, str]]:
    """(line number, order number, invoice number) of each row of a `--from-csv` file (UTF-8,
    with or without the BOM Excel writes)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
        raise UsageError(f"cannot read --from-csv {path}: {why or exc}") from None
    reader = csv.DictReader(io.StringIO(text))
    header = [name.strip() for name in reader.fieldnames or []]
    if not set(MARK_CSV_COLUMNS) <= set(header):
        raise UsageError(
            f"--from-csv {path}: the first line must be the header {','.join(MARK_CSV_COLUMNS)}"
            f" (found {','.join(header) or 'nothing'})"
        )
    reader.fieldnames = header
    rows = []
    for row in reader:
        order_no, number = (str(row.get(name) or "").strip() for name in MARK_CSV_COLUMNS)
        if order_no or number:
            rows.append((reader.line_num, order_no, number))
    return rows


def _mark_from_csv(ctx: Context, path: Path) -> int:
    out = ctx.out
    rows = read_mark_csv(path)
    marked = 0
    skipped = 0
    for line, order_no, number in rows:
        try:
            if not order_no or not number:
                raise AdminApiError("both orderNo and invoiceNumber are needed")
            submission_id = _markable_submission(ctx, order_no)
            ctx.client.mark_issued(submission_id, number, ctx.args.reason)
        except (AdminAuthError, AdminUnreachable):
            raise  # nothing further would work either
        except AdminApiError as exc:
            skipped += 1
            _report_mark(out, line, order_no, number, None, f"skipped: {exc}")
            continue
        marked += 1
        _report_mark(out, line, order_no, number, submission_id, "marked issued_manually")
    out.note(f"{marked} marked, {skipped} skipped, of {len(rows)} rows in {path}")
    return EXIT_FAILURE if skipped else EXIT_OK


def _markable_submission(ctx: Context, order_no: str) -> str:
    """The one submission with business key `order_no` (of --tenant, if given) that can be
    marked; `AdminApiError` saying why when there is none, or more than one."""
    filters = [("q", order_no)]
    if ctx.args.tenant:
        filters.append(("tenant", ctx.args.tenant))
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page = ctx.client.list_submissions(filters, limit=MAX_PAGE, cursor=cursor)
        items = [item for item in page.get("items") or [] if isinstance(item, dict)]
        found += [item for item in items if item.get("business_key") == order_no]
        cursor = page.get("next_cursor")
        if not cursor or not items:
            break
    markable = [item for item in found if item.get("status") in _MARKABLE]
    if not found:
        raise AdminApiError(f"unknown order number {order_no!r}")
    if not markable:
        states = ", ".join(f"{i.get('submission_id')} is {i.get('status')}" for i in found)
        raise AdminApiError(f"not in a state that can be marked ({states})")
    if len(markable) > 1:
        tenants = ", ".join(sorted({str(item.get("tenant")) for item in markable}))
        raise AdminApiError(
            f"{len(markable)} submissions have this order number (tenants {tenants}); "
            "give --tenant, or mark each by its id"
        )
    return str(markable[0]["submission_id"])


def _report_mark(
    out: Output, line: int, order_no: str, number: str, submission_id: str | None, what: str
) -> None:
    if out.json_mode:
        out.json(
            {
                "line": line,
                "order_no": order_no,
                "invoice_number": number,
                "submission_id": submission_id,
                "marked": submission_id is not None,
                "result": what,
            }
        )
    else:
        out.result(f"line {line}: {order_no} → {number}: {submission_id or '-'} {what}")


# -- dispatcher and circuit -----------------------------------------------------------------------


def _dispatcher(action: str | None) -> Command:
    def command(ctx: Context) -> int:
        state = ctx.client.dispatcher(action, getattr(ctx.args, "reason", None))
        ctx.out.show(state, dispatcher_summary)
        return EXIT_OK

    command.__doc__ = f"dispatcher {action or 'state'}"
    return command


def _circuit(action: str | None) -> Command:
    def command(ctx: Context) -> int:
        state = ctx.client.circuit(action, getattr(ctx.args, "reason", None))
        ctx.out.show(state, circuit_view)
        return EXIT_OK

    command.__doc__ = f"circuit {action or 'status'}"
    return command


def _incident(set_line: bool) -> Command:
    def command(ctx: Context) -> int:
        message = ctx.args.message if set_line else None
        answer = ctx.client.incident(message, getattr(ctx.args, "reason", None))
        ctx.out.show(answer, incident_view)
        return EXIT_OK

    command.__doc__ = f"status {'set' if set_line else 'clear'}"
    return command


def _callbacks_list(ctx: Context) -> int:
    """callbacks list"""
    answer = ctx.client.callbacks(
        states=ctx.args.state,
        tenant=ctx.args.tenant,
        submission=ctx.args.submission,
        limit=ctx.args.limit,
    )
    ctx.out.show(answer, callback_table)
    return EXIT_OK


def _callbacks_replay(ctx: Context) -> int:
    """callbacks replay"""
    ctx.out.show(ctx.client.replay_callback(ctx.args.event, ctx.args.reason), callback_view)
    return EXIT_OK


def _token_command(refresh: bool) -> Command:
    def command(ctx: Context) -> int:
        state = ctx.client.token(
            refresh=refresh,
            reason=getattr(ctx.args, "reason", None),
            tenant=getattr(ctx.args, "tenant", None),
        )
        ctx.out.show(state, token_view)
        return EXIT_OK

    command.__doc__ = f"token {'refresh' if refresh else 'status'}"
    return command


# -- the argparse tree ----------------------------------------------------------------------------


def _add_connection_options(parser: argparse.ArgumentParser, *, leaf: bool) -> None:
    """On the group (`outbox --json list`) and on every command (`outbox list --json`).

    On commands the defaults are SUPPRESS, so an option given before the command is not
    overwritten by the command's default."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if leaf else value

    group = parser.add_argument_group("admin API and output")
    group.add_argument(
        "--url",
        default=default(None),
        metavar="URL",
        help=f"admin API base URL (default ${URL_ENV}, else {DEFAULT_ADMIN_URL})",
    )
    group.add_argument(
        "--token-file",
        default=default(None),
        metavar="PATH",
        help=f"read the bearer token from PATH instead of ${TOKEN_ENV}",
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="JSON for scripts: one value per line, no colours or tables",
    )
    group.add_argument(
        "--timeout",
        type=_positive_duration,
        default=default(DEFAULT_TIMEOUT),
        metavar="SECONDS",
        help=f"per-request timeout (default {DEFAULT_TIMEOUT:g})",
    )


def _command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    command: Command,
    help_text: str,
    *,
    description: str | None = None,
) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        name,
        help=help_text,
        description=description or help_text[0].upper() + help_text[1:] + ".",
        epilog=EXIT_CODES_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_connection_options(parser, leaf=True)
    parser.set_defaults(handler=_wrap(command))
    return parser


def _prepare_group(parser: argparse.ArgumentParser, description: str) -> None:
    parser.description = parser.description or description
    parser.epilog = EXIT_CODES_EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    _add_connection_options(parser, leaf=False)


def _reason_option(parser: argparse.ArgumentParser, *, required: bool, what: str) -> None:
    parser.add_argument(
        "--reason",
        type=_reason,
        required=required,
        metavar="TEXT",
        help=f"why ({what}; recorded in the audit log)",
    )


def configure_outbox(parser: argparse.ArgumentParser) -> None:
    """Add the `outbox` commands to `parser` (the `outbox` subcommand of `invoice-gateway`)."""
    _prepare_group(
        parser,
        "See and repair the durable outbox through the gateway's admin API: what is stuck, "
        "replay it, discard it, and who did what.",
    )
    commands = parser.add_subparsers(dest="outbox_command", required=True, metavar="COMMAND")

    listing = _command(commands, "list", cmd_list, "list submissions (newest first)")
    _add_filters(listing)
    listing.add_argument(
        "--limit", type=_positive_int, default=50, metavar="N", help="at most N rows (default 50)"
    )
    listing.add_argument("--all", action="store_true", help="every matching row (follows pages)")

    show = _command(commands, "show", cmd_show, "one submission with its payload and answer")
    show.add_argument("id", metavar="ID", help="submission id (sub_…)")

    replay = _command(
        commands,
        "replay",
        cmd_replay,
        "replay one submission, or all matching filters",
        description="Replay one submission (--id), or every replayable one matching the filters. "
        "--dry-run prints how many match. A bulk replay runs as a job on the gateway, at the "
        "dispatcher's own rate; this command shows its progress until it ends, and Ctrl-C "
        "cancels it (exit 1).",
    )
    replay.add_argument("--id", metavar="ID", help="the one submission to replay")
    _add_filters(replay)
    replay.add_argument(
        "--dry-run", action="store_true", help="only count what a replay would touch"
    )
    _reason_option(replay, required=False, what="required for a bulk replay")
    replay.add_argument(
        "--poll-interval",
        type=_positive_duration,
        default=0.5,
        metavar="SECONDS",
        help="how often to ask a bulk job for its progress (default 0.5)",
    )

    requeue = _command(
        commands, "requeue", cmd_requeue, "give a dead submission a fresh start (attempts, age)"
    )
    requeue.add_argument("id", metavar="ID")
    _reason_option(requeue, required=False, what="optional")

    discard = _command(
        commands, "discard", cmd_discard, "decide not to send a submission (needs --reason)"
    )
    discard.add_argument("id", metavar="ID")
    _reason_option(discard, required=True, what="required")

    force = _command(
        commands,
        "force-resend",
        cmd_force_resend,
        "send a DELIVERED submission again (may create a second invoice; needs --yes)",
    )
    force.add_argument("id", metavar="ID")
    _reason_option(force, required=True, what="required")
    force.add_argument("--yes", action="store_true", help="confirm: it may create a second invoice")

    edit = _command(
        commands,
        "edit",
        cmd_edit,
        "change one payload field before a replay",
        description="Change one field of a queued, unknown, dead or failed submission's payload "
        "(e.g. a wrong buyer tax number), then replay it. VALUE is taken as JSON when it parses "
        "(123, true, null, {...}), else as text: quote digit-only text as JSON to keep it a "
        "string, e.g. --set '/order/buyerTaxNum=\"110101199003072316\"'. The business and "
        "ordering keys cannot be edited.",
    )
    edit.add_argument("id", metavar="ID")
    edit.add_argument(
        "--set",
        type=parse_assignment,
        required=True,
        metavar="POINTER=VALUE",
        help="JSON pointer into the payload and its new value",
    )
    _reason_option(edit, required=True, what="required")

    export = _command(
        commands,
        "export",
        cmd_export,
        "write matching submissions as JSON Lines (--unmasked: a backup)",
        description="Write every submission matching the filters as JSON Lines: to FILE (a "
        "progress bar on stderr; FILE appears only when complete) or stdout. Personal data is "
        "masked unless --unmasked is given with --reason (audited): only an unmasked export, "
        "every field whole, is a backup `outbox import` restores.",
    )
    _add_filters(export)
    export.add_argument("-o", "--output", metavar="FILE", help="write here (default stdout)")
    export.add_argument(
        "--unmasked",
        action="store_true",
        help="every field whole, personal data included (needs --reason; audited)",
    )
    _reason_option(export, required=False, what="required with --unmasked")

    load = _command(
        commands,
        "import",
        cmd_import,
        "load an export into an empty store",
        description="Load a file written by `outbox export` into the gateway. The gateway "
        "refuses (exit 1) unless its store holds no submissions.",
    )
    load.add_argument("file", metavar="FILE", help="JSON Lines from `outbox export` (- for stdin)")

    manual = _command(
        commands,
        "export-manual",
        cmd_export_manual,
        "write stuck invoices for issuing by hand in the tax bureau's portal (needs --reason)",
        description="Write the invoices stuck in the outbox (default: queued and dead) as the "
        "tax bureau portal's batch import takes them: one row per invoice line, the buyer's "
        "name, tax number, address, phone and bank account WHOLE (that is the point: the "
        "portal needs them), as CSV (UTF-8 with a BOM, for Excel) or XLSX. The totals "
        "(invoices, lines, amount, tax) go to stderr. Operators only; --reason is required "
        "and the export is recorded in the audit log. After issuing them in the portal, record "
        "the invoice numbers with `outbox mark-issued`, or the gateway sends them when the "
        "platform recovers. See docs/manual-issuance.md.",
    )
    _add_filters(manual)
    manual.add_argument(
        "-o", "--output", required=True, metavar="FILE", help="write here (created mode 0600)"
    )
    manual.add_argument(
        "--format",
        choices=FORMATS,
        help="csv or xlsx (default: xlsx when FILE ends in .xlsx, else csv)",
    )
    _reason_option(manual, required=True, what="required: the file holds personal data")

    mark = _command(
        commands,
        "mark-issued",
        cmd_mark_issued,
        "record invoices issued by hand in the tax bureau's portal (never sent again)",
        description="Record that an invoice was issued by hand in the tax bureau's portal: the "
        "submission becomes issued_manually, final, and is never sent to the platform. One: "
        "ID --invoice-number N. Many: --from-csv FILE, a CSV with the header "
        f"{','.join(MARK_CSV_COLUMNS)}; each line is reported, and lines whose order number is "
        "unknown, or whose submission cannot be marked (only queued, dead, unknown and failed "
        "can), are skipped (exit 1 if any were). --reason is required; each mark is audited.",
    )
    mark.add_argument("id", nargs="?", metavar="ID", help="the submission (sub_…)")
    mark.add_argument("--invoice-number", metavar="N", help="the number the portal gave it")
    mark.add_argument(
        "--from-csv", metavar="FILE", help=f"mark many: {','.join(MARK_CSV_COLUMNS)} per line"
    )
    mark.add_argument(
        "--tenant", metavar="ID", help="with --from-csv: look order numbers up in this tenant"
    )
    _reason_option(mark, required=True, what="required")

    for name, help_text in (
        ("pause", "stop the dispatcher sending queued submissions"),
        ("resume", "let the dispatcher send again"),
    ):
        action = _command(commands, name, _dispatcher(name), help_text)
        _reason_option(action, required=False, what="optional")
    _command(commands, "dispatcher", _dispatcher(None), "whether the dispatcher runs; its counters")

    job = _command(commands, "job", cmd_job, "a bulk replay job's progress")
    job.add_argument("job_id", metavar="JOB_ID")
    job.add_argument("--cancel", action="store_true", help="cancel the job")

    audit = _command(commands, "audit", cmd_audit, "who did what, when and why (newest first)")
    audit.add_argument(
        "--limit",
        type=_positive_int,
        default=20,
        metavar="N",
        help="at most N entries (default 20)",
    )


def configure_circuit(parser: argparse.ArgumentParser) -> None:
    """Add the `circuit` commands to `parser` (the `circuit` subcommand of `invoice-gateway`)."""
    _prepare_group(
        parser,
        "See the circuit breakers and the upstream's health; force them open or closed.",
    )
    commands = parser.add_subparsers(dest="circuit_command", required=True, metavar="COMMAND")
    _command(commands, "status", _circuit(None), "breakers and upstream health")
    for name, help_text in (
        ("open", "force every breaker open: send nothing, queue submissions (until reset)"),
        ("close", "force every breaker closed: send everything (until reset)"),
        ("reset", "end a forced state; breakers follow traffic and the probe again"),
    ):
        action = _command(commands, name, _circuit(name), help_text)
        _reason_option(action, required=False, what="optional")


def configure_status(parser: argparse.ArgumentParser) -> None:
    """Add the `status` commands to `parser` (the `status` subcommand of `invoice-gateway`)."""
    _prepare_group(
        parser,
        "Tell everyone who opens the gateway's /status page what is going on: one line at the "
        "top of the page (and in /status/feed.json), the same on every replica of the store, "
        "kept across restarts and recorded in the audit log.",
    )
    commands = parser.add_subparsers(dest="status_command", required=True, metavar="COMMAND")
    set_line = _command(
        commands,
        "set",
        _incident(set_line=True),
        "show MESSAGE at the top of /status (replaces the line shown)",
        description="Show MESSAGE at the top of the /status page for everyone, on every "
        "replica (within a few seconds), until `status clear` or another `status set`. One "
        "line of at most 280 characters; Chinese is fine; it is shown as text, never as markup. "
        "The page also says when it was set and by which admin token.",
    )
    set_line.add_argument(
        "message", metavar="MESSAGE", help="the line, e.g. 开票平台故障，发票将在恢复后自动开具"
    )
    _reason_option(set_line, required=False, what="optional; not shown on /status")
    clear = _command(commands, "clear", _incident(set_line=False), "remove the line from /status")
    _reason_option(clear, required=False, what="optional")


def configure_callbacks(parser: argparse.ArgumentParser) -> None:
    """Add the `callbacks` commands to `parser` (the `callbacks` subcommand of
    `invoice-gateway`)."""
    _prepare_group(
        parser,
        "The events sent to the tenants' callback URLs when their queued submissions become "
        "final (docs/callbacks.md): what was sent, what is waiting or dead, and sending one "
        "again.",
    )
    commands = parser.add_subparsers(dest="callbacks_command", required=True, metavar="COMMAND")
    listing = _command(commands, "list", _callbacks_list, "callback events, newest first")
    listing.add_argument(
        "--state",
        metavar="STATES",
        help="comma-separated: pending, sending, delivered, dead, skipped",
    )
    listing.add_argument("--tenant", metavar="TENANT", help="one tenant's events")
    listing.add_argument("--submission", metavar="ID", help="one submission's events")
    listing.add_argument(
        "--limit", type=whole_number(1, 1000), default=100, metavar="N", help="at most N (100)"
    )
    replay = _command(
        commands,
        "replay",
        _callbacks_replay,
        "send an event again (delivered, dead or skipped; audited)",
        description="Send the callback event ID (evt_42) to its tenant's URL again, whatever "
        "its state unless it is being sent right now: it becomes pending, due at once, and is "
        "retried as usual. The receiver sees the same X-Gateway-Delivery id as before.",
    )
    replay.add_argument("event", metavar="ID", help="the event, e.g. evt_42")
    _reason_option(replay, required=False, what="optional")


def configure_token(parser: argparse.ArgumentParser) -> None:
    """Add the `token` commands to `parser` (the `token` subcommand of `invoice-gateway`)."""
    _prepare_group(
        parser,
        "See the platform access token and the token calls (the platform allows about 50 per "
        "30 days); after the platform refused the credentials or said the token quota is used "
        "up, tell the gateway to ask again.",
    )
    commands = parser.add_subparsers(dest="token_command", required=True, metavar="COMMAND")
    _command(
        commands,
        "status",
        _token_command(refresh=False),
        "the token, the token calls, and what holds the next one back (also each tenant's own)",
    )
    refresh = _command(
        commands,
        "refresh",
        _token_command(refresh=True),
        "ask the platform for a new token now (needs --reason)",
        description="Ask the platform for a new access token now: ends a hold only an operator "
        "may end (the platform refused the credentials, or said the token quota is used up) and "
        "the back-off, then makes one token call, which counts against the platform's token "
        "quota. The hourly and daily caps still hold. Exit 1 when no token came (the answer "
        "says why).",
    )
    _reason_option(refresh, required=True, what="required")
    refresh.add_argument(
        "--tenant",
        metavar="ID",
        help="refresh the token of this tenant's own platform identity (a merchant of a "
        "service-provider application) instead of the gateway's",
    )
