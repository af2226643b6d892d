"""`invoice-gateway migrate`, `invoice-gateway store copy`, `invoice-gateway store
rotate-key` and `invoice-gateway store backup`: the store itself, not through a running gateway
(docs/postgresql.md, docs/encryption.md).

They open stores directly by URL. The work of a copy is `gateway.outbox.store.copy`, of a
backup `gateway.outbox.store.backup`; this module parses, opens, shows progress (on stderr, as
the on-call commands do) and prints.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from rich.console import Group, RenderableType
from rich.progress import TaskID
from rich.text import Text

from gateway.cli.oncall.client import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from gateway.cli.oncall.render import Output
from gateway.config import CONFIG_PATH_ENV, OutboxConfig, StoreConfig, load_config
from gateway.errors import ConfigError, GatewayError, StoreError
from gateway.outbox.store import Store, is_postgres_url, masked_url, open_store, sealer_of
from gateway.outbox.store.backup import ACTION as BACKUP_ACTION
from gateway.outbox.store.backup import (
    PAGES_PER_STEP,
    BackupError,
    BackupReport,
    TargetExists,
    backup_sqlite,
    record_backup,
)
from gateway.outbox.store.copy import DEFAULT_BATCH, CopyReport, copy_store
from gateway.outbox.store.sealing import SealingError
from gateway.outbox.submissions import AuditEntry, SubmissionQuery
from gateway.quantities import whole_number

__all__ = ["configure_migrate", "configure_store"]

STORE_URL_ENV: Final = "GATEWAY_STORE_URL"
DEFAULT_CONFIG: Final = "config/gateway.yaml"

EXIT_CODES_EPILOG: Final = """\
exit status (scripts can rely on it):
  0  success
  1  a store cannot be opened, read or written, a copy was interrupted (run it
     again: it goes on where it stopped), or the copy's verification found
     differences; a backup could not be written (its temporary file is removed)
  2  usage error: a bad URL or option, --from and --to the same store, no
     source file, an invalid configuration; a backup's FILE exists (without
     --force) or its directory does not, a PostgreSQL store to back up (use
     pg_dump)

docs: docs/postgresql.md"""

COPY_DESCRIPTION: Final = """\
Copy everything one store holds into another: the submissions (in acceptance order,
in batches), the audit log and the tokens. Then verify that the target holds every
source submission, in the same state, and record a store.copy entry in the target's
audit log. The target's schema is brought up to date when it is opened; the source
is only read.

Stop the gateway (every replica) that uses the source before copying, and start
gateways on the target only once the copy has finished: rows that change in the
source during the copy may reach the target as they were, or not at all. This
command cannot tell whether a gateway is running.

An interrupted copy is finished by running the same command again: what the target
holds already is left alone and counted as already there.

Encrypted stores (docs/encryption.md): both stores are opened with the keys in
$GATEWAY_ENCRYPTION_KEY and $GATEWAY_ENCRYPTION_PREVIOUS_KEYS; rows are decrypted
with the source's keys and written encrypted under the current key (in plaintext
if none is set).

URLs: sqlite:///PATH (the embedded store's file) or postgresql://USER@HOST:PORT/DB
(a password in the URL is never shown)."""

MIGRATE_DESCRIPTION: Final = f"""\
Bring the store's schema up to date, as a gateway with store.migrate: auto does on
start; with store.migrate: manual, gateways refuse an older schema until this has
run. Run it once per database, before starting the new gateway version.

The store: --store-url, else the configuration's store_url (${STORE_URL_ENV}
overrides it). With --store-url or ${STORE_URL_ENV} and no --config (nor
${CONFIG_PATH_ENV}), no configuration file is read."""


def configure_migrate(parser: argparse.ArgumentParser) -> None:
    """The `migrate` command on `parser`."""
    _describe(parser, MIGRATE_DESCRIPTION)
    _store_options(parser)
    parser.set_defaults(handler=cmd_migrate)


def _store_options(parser: argparse.ArgumentParser) -> None:
    """--config and --store-url: the store as `_migrate_target` finds it."""
    parser.add_argument("--config", metavar="PATH", help="configuration file (YAML)")
    parser.add_argument(
        "--store-url", type=_store_url, metavar="URL", help="the store (default: the config's)"
    )


ROTATE_DESCRIPTION: Final = """\
Re-encrypt under the current key every stored body and answer that is under another
key, or in plaintext (docs/encryption.md): in batches, each one transaction that
never overwrites a row a gateway changed meanwhile. Gateways may keep running:
restart them first with the new key as current and the old one among the previous
keys (store.encryption.previous_keys or $GATEWAY_ENCRYPTION_PREVIOUS_KEYS), then
run this; once it reports nothing left under the old key, the old key can go.
Interrupted, it is finished by running it again. With no current key configured,
it decrypts everything (turning encryption off).

The store and its keys: as for `migrate` (--store-url, else the configuration's
store_url; keys from the configuration, else $GATEWAY_ENCRYPTION_KEY). Exit status 1
also when values are still under other keys at the end."""
#: Passes over the store at most: rows a gateway re-wrote under an old key during one
#: pass are taken up by the next.
ROTATE_PASSES: Final = 3
#: Tries of one batch that fails (a lost connection, a deadlock with a gateway's write).
BATCH_TRIES: Final = 3


BACKUP_DESCRIPTION: Final = """\
Write a consistent copy of a SQLite store into FILE while gateways keep running
and writing: SQLite's online backup API copies one snapshot of the database, N
pages at a time (progress on stderr), into a temporary file next to FILE. The copy
is checked (PRAGMA integrity_check, and its submissions by state against the
snapshot's), flushed to disk and only then renamed into place: FILE is a whole,
checked copy or is left as it was. An existing FILE is replaced only with --force.
A store.backup entry is recorded in the store's audit log.

Encrypted stores (docs/encryption.md) are copied as they are: the backup is still
encrypted, and a gateway started on it needs the same keys (the current one and
any previous key a value is sealed under). Keep the keys apart from the backups.

To restore: stop the gateway, put FILE in place of the store's file (with no
-wal or -shm file left next to it), start the gateway: it delivers what FILE
holds queued. Submissions accepted after the backup are not in it.

The store: as for `migrate` (--store-url, else the configuration's store_url;
$GATEWAY_STORE_URL overrides it). A PostgreSQL store is backed up with pg_dump
and restored with pg_restore: for one, this command prints the pg_dump command
and does nothing else."""


def configure_store(parser: argparse.ArgumentParser) -> None:
    """The `store` group (`store copy`, `store rotate-key`, `store backup`) on `parser`."""
    _describe(parser, "Work on stores directly, not through a running gateway.")
    commands = parser.add_subparsers(dest="store_command", required=True, metavar="COMMAND")
    copy = commands.add_parser(
        "copy",
        help="copy one store into another (e.g. SQLite to PostgreSQL); stop the gateway first",
    )
    _describe(copy, COPY_DESCRIPTION)
    copy.add_argument(
        "--from", dest="source", required=True, type=_store_url, metavar="URL", help="source"
    )
    copy.add_argument(
        "--to", dest="target", required=True, type=_store_url, metavar="URL", help="target"
    )
    _step_and_json(copy, "--batch", DEFAULT_BATCH, 10_000, "submissions per transaction")
    copy.set_defaults(handler=cmd_copy)
    rotate = commands.add_parser(
        "rotate-key",
        help="re-encrypt stored bodies and answers under the current key (gateways may run)",
    )
    _describe(rotate, ROTATE_DESCRIPTION)
    _store_options(rotate)
    _step_and_json(rotate, "--batch", DEFAULT_BATCH, 10_000, "rows per transaction")
    rotate.set_defaults(handler=cmd_rotate_key)
    backup = commands.add_parser(
        "backup",
        help="copy a SQLite store into a file while gateways run (PostgreSQL: pg_dump)",
    )
    _describe(backup, BACKUP_DESCRIPTION)
    backup.add_argument(
        "-o", "--output", required=True, type=Path, metavar="FILE", help="the backup file"
    )
    _store_options(backup)
    backup.add_argument("--force", action="store_true", help="replace FILE if it exists")
    _step_and_json(backup, "--pages", PAGES_PER_STEP, 1_000_000, "pages copied per step")
    backup.set_defaults(handler=cmd_backup)


def _step_and_json(
    parser: argparse.ArgumentParser, option: str, default: int, most: int, what: str
) -> None:
    """`option` N (1 to `most`): how much one step does; and --json."""
    parser.add_argument(
        option,
        type=whole_number(1, most),
        default=default,
        metavar="N",
        help=f"{what} (default {default})",
    )
    parser.add_argument("--json", action="store_true", help="the summary as one JSON line")


def _describe(parser: argparse.ArgumentParser, description: str) -> None:
    parser.description = description
    parser.epilog = EXIT_CODES_EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


# -- migrate ----------------------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace) -> int:
    out = Output(json_mode=False)
    try:
        url, outbox, settings = _migrate_target(args)
    except ValueError as exc:
        out.error(str(exc))
        return EXIT_USAGE

    async def migrate() -> None:
        store = await open_store(url, outbox, settings, migrate=True)
        await store.close()

    try:
        asyncio.run(migrate())
    except StoreError as exc:
        out.error(_without_password(str(exc), url))
        return EXIT_FAILURE
    out.result(Text(f"schema is up to date ({masked_url(url)})"))
    return EXIT_OK


def _migrate_target(args: argparse.Namespace) -> tuple[str, OutboxConfig, StoreConfig]:
    """The store to migrate and its settings (see MIGRATE_DESCRIPTION); `ValueError` saying
    what is wrong with the configuration."""
    config_path = args.config or os.environ.get(CONFIG_PATH_ENV)
    direct = args.store_url or os.environ.get(STORE_URL_ENV)
    if direct and not config_path:
        try:
            return _store_url(direct), OutboxConfig(), StoreConfig()
        except argparse.ArgumentTypeError as exc:
            raise ValueError(f"{STORE_URL_ENV}: {exc}") from None
    path = config_path or DEFAULT_CONFIG
    try:
        config = load_config(path)
    except ConfigError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return args.store_url or config.store_url, config.outbox, config.store


# -- store copy -------------------------------------------------------------------------------


#: What each phase of a copy is called on the progress display.
PHASES: Final = {
    "submissions": "copying submissions",
    "audit": "copying the audit log",
    "verify": "verifying",
}


def cmd_copy(args: argparse.Namespace) -> int:
    out = Output(json_mode=args.json)
    source, target = args.source, args.target
    if _same_store(source, target):
        out.error(f"--from and --to name the same store ({masked_url(source)})")
        return EXIT_USAGE
    if not is_postgres_url(source) and not _sqlite_path(source).is_file():
        out.error(f"--from: there is no store at {_sqlite_path(source)}")
        return EXIT_USAGE
    try:
        with out.progress("copying") as display:
            tasks: dict[str, TaskID] = {}

            def progress(phase: str, done: int, total: int) -> None:
                if phase not in tasks:
                    tasks[phase] = display.add_task(PHASES.get(phase, phase), total=total)
                display.update(tasks[phase], completed=done, total=total)

            report = asyncio.run(_copy(source, target, args.batch, progress))
    except KeyboardInterrupt:
        out.error("interrupted: run the same command again to copy the rest")
        return EXIT_FAILURE
    except GatewayError as exc:
        out.error(_without_password(_without_password(str(exc), source), target))
        return EXIT_FAILURE
    summary = {"source": masked_url(source), "target": masked_url(target), **report.as_json()}
    out.show(summary, lambda _: _copy_view(summary, report))
    if not report.verification.ok:
        out.error(f"verification failed: {report.verification.describe()}")
        return EXIT_FAILURE
    return EXIT_OK


async def _copy(
    source_url: str, target_url: str, batch: int, progress: Callable[[str, int, int], None]
) -> CopyReport:
    source = await _open(source_url, "--from", migrate=False)
    try:
        target = await _open(target_url, "--to", migrate=True)
        try:
            return await copy_store(
                source,
                target,
                source_name=masked_url(source_url),
                actor=_os_user(),
                batch=batch,
                progress=progress,
            )
        finally:
            await target.close()
    finally:
        await source.close()


async def _open(url: str, option: str, *, migrate: bool) -> Store:
    try:
        return await open_store(url, migrate=migrate)
    except StoreError as exc:
        raise StoreError(f"{option} {masked_url(url)}: {exc}") from exc


def _copy_view(summary: dict[str, Any], report: CopyReport) -> RenderableType:
    states = ", ".join(f"{state} {n}" for state, n in report.by_state.items())
    lines = [
        Text(f"copied {summary['source']} → {summary['target']}", style="bold"),
        Text(
            f"  submissions  {report.submissions}: {report.copied} copied, "
            f"{report.already_present} already there" + (f" ({states})" if states else "")
        ),
        Text(
            f"  audit log    {report.audit_entries} entries: {report.audit_copied} copied, "
            f"{report.audit_entries - report.audit_copied} already there"
        ),
        Text(f"  tokens       {report.tokens}"),
    ]
    if report.verification.ok:
        lines.append(
            Text("  verified     every source submission is in the target, in the same state")
        )
    else:
        lines.append(Text("  verified     NO: see below", style="bold red"))
    return Group(*lines)


# -- store rotate-key -------------------------------------------------------------------------


def cmd_rotate_key(args: argparse.Namespace) -> int:
    out = Output(json_mode=args.json)
    try:
        url, outbox, settings = _migrate_target(args)
        current = sealer_of(settings, os.environ).current_id
    except (ValueError, StoreError) as exc:
        out.error(str(exc))
        return EXIT_USAGE

    async def rotate() -> dict[str, Any]:
        store = await open_store(url, outbox, settings, migrate=False)
        try:
            return await _rotate(store, current, args.batch)
        finally:
            await store.close()

    try:
        summary = {"store": masked_url(url), **asyncio.run(rotate())}
    except KeyboardInterrupt:
        out.error("interrupted: run the same command again to re-encrypt the rest")
        return EXIT_FAILURE
    except GatewayError as exc:
        out.error(_without_password(str(exc), url))
        return EXIT_FAILURE
    out.show(summary, lambda _: _rotate_view(summary))
    if summary["left"]:
        left = ", ".join(f"{kid} {n}" for kid, n in summary["left"].items())
        out.error(
            f"values are still under other keys ({left}): a gateway still seals with an old "
            "current key? Restart it with the new key, then run this again"
        )
        return EXIT_FAILURE
    return EXIT_OK


async def _rotate(store: Store, current: str | None, batch: int) -> dict[str, Any]:
    """Re-seal every row, pass after pass while a gateway's writes left some behind."""
    before = await store.key_usage()
    total = await store.count(SubmissionQuery())
    checked = resealed = changed = 0
    for number in range(1, ROTATE_PASSES + 1):
        cursor: str | None = None
        seen = changed_now = 0
        while True:
            done = await _reseal_batch(store, cursor, batch)
            seen += done.checked
            resealed += done.resealed
            changed_now += done.changed
            _progress(
                f"pass {number}: {seen}/{max(total, seen)} rows checked, "
                f"{resealed} re-encrypted under {current or 'no key (plaintext)'}"
            )
            if done.cursor is None:
                break
            cursor = done.cursor
        checked += seen
        changed += changed_now
        usage = await store.key_usage()
        if not changed_now and not _left(usage, current):
            break
    after = await store.key_usage()
    return {
        "current_key": current,
        "rows": total,
        "checked": checked,
        "resealed": resealed,
        "changed_meanwhile": changed,
        "before": before,
        "after": after,
        "left": _left(after, current),
    }


async def _reseal_batch(store: Store, cursor: str | None, batch: int) -> Any:
    for attempt in range(1, BATCH_TRIES + 1):
        try:
            return await store.reseal(after=cursor, limit=batch)
        except SealingError:
            raise
        except StoreError as exc:
            if attempt == BATCH_TRIES:
                raise
            _progress(f"batch failed ({exc}); trying again")
            await asyncio.sleep(0.5 * attempt)
    raise AssertionError("unreachable")


def _left(usage: dict[str, int], current: str | None) -> dict[str, int]:
    return {kid: n for kid, n in sorted(usage.items()) if kid != current}


def _progress(message: str, command: str = "rotate-key") -> None:
    sys.stderr.write(f"invoice-gateway store {command}: {message}\n")
    sys.stderr.flush()


def _rotate_view(summary: dict[str, Any]) -> RenderableType:
    def usage(counts: dict[str, int]) -> str:
        return ", ".join(f"{kid} {n}" for kid, n in counts.items()) or "none (plaintext)"

    current = summary["current_key"] or "none: values are stored in plaintext"
    return Group(
        Text(f"re-encrypted {summary['store']}", style="bold"),
        Text(f"  current key  {current}"),
        Text(
            f"  rows         {summary['rows']}: {summary['resealed']} re-encrypted, "
            f"{summary['changed_meanwhile']} changed by a gateway meanwhile"
        ),
        Text(f"  before       values by key id: {usage(summary['before'])}"),
        Text(f"  after        values by key id: {usage(summary['after'])}"),
    )


# -- store backup -----------------------------------------------------------------------------


def cmd_backup(args: argparse.Namespace) -> int:
    out = Output(json_mode=args.json)
    try:
        url = _migrate_target(args)[0]
    except ValueError as exc:
        out.error(str(exc))
        return EXIT_USAGE
    target: Path = args.output
    if is_postgres_url(url):
        out.error(_pg_dump_advice(url, target))
        return EXIT_USAGE
    started = time.monotonic()
    try:
        report = backup_sqlite(
            _sqlite_path(url),
            target,
            pages_per_step=args.pages,
            progress=lambda done, total: _progress(f"{done}/{total} pages copied", "backup"),
            replace=args.force,
        )
    except TargetExists as exc:
        out.error(f"{exc}: pass --force to replace it, or name another file")
        return EXIT_USAGE
    except BackupError as exc:
        out.error(str(exc))
        return EXIT_USAGE if exc.usage else EXIT_FAILURE
    except KeyboardInterrupt:
        out.error(f"interrupted: {target} was not written; run the command again")
        return EXIT_FAILURE
    summary = {"store": url, **report.as_json(), "seconds": round(time.monotonic() - started, 3)}
    entry = AuditEntry(actor=_os_user(), role="operator", action=BACKUP_ACTION, details=summary)
    problem = None
    try:
        asyncio.run(record_backup(_sqlite_path(url), entry))
    except StoreError as exc:
        problem = str(exc)
    out.show({**summary, "audited": problem is None}, lambda _: _backup_view(summary, report))
    if problem is not None:
        # The backup itself is whole and checked: a warning, not a failure.
        out.error(
            f"the backup is complete, but its {BACKUP_ACTION} entry could not be recorded in "
            f"the store's audit log: {problem}"
        )
    return EXIT_OK


def _pg_dump_advice(url: str, target: Path) -> str:
    """What to run instead for a PostgreSQL store (the password left out: give it through
    PGPASSWORD or ~/.pgpass)."""
    address = shlex.quote(masked_url(url).replace(":***@", "@", 1))
    file = shlex.quote(str(target))
    return (
        "store backup copies SQLite stores only; back up a PostgreSQL store with pg_dump "
        "(the password through PGPASSWORD or ~/.pgpass):\n"
        f"  pg_dump --format=custom --file {file} {address}\n"
        f"and restore it into an empty database with pg_restore:\n"
        f"  pg_restore --dbname {address} {file}"
    )


def _backup_view(summary: dict[str, Any], report: BackupReport) -> RenderableType:
    states = ", ".join(f"{state} {n}" for state, n in report.by_state.items())
    return Group(
        Text(f"backed up {summary['store']} → {report.file}", style="bold"),
        Text(f"  file         {report.file}, {report.size:,} bytes ({report.pages} pages)"),
        Text(f"  submissions  {report.submissions}" + (f" ({states})" if states else "")),
        Text(f"  seconds      {summary['seconds']}"),
    )


# -- shared -----------------------------------------------------------------------------------


def _store_url(text: str) -> str:
    """A store URL as the configuration's `store_url` takes it."""
    if is_postgres_url(text) or (text.startswith("sqlite:///") and len(text) > len("sqlite:///")):
        return text
    raise argparse.ArgumentTypeError(
        f"expected sqlite:///PATH or postgresql://USER@HOST:PORT/DB, got {masked_url(text)!r}"
    )


def _sqlite_path(url: str) -> Path:
    return Path(url.removeprefix("sqlite:///"))


def _same_store(a: str, b: str) -> bool:
    """Whether two URLs name one database (whoever connects to it)."""
    if is_postgres_url(a) != is_postgres_url(b):
        return False
    if not is_postgres_url(a):
        return _sqlite_path(a).resolve() == _sqlite_path(b).resolve()
    first, second = urlsplit(a), urlsplit(b)
    return (
        (first.hostname or "localhost") == (second.hostname or "localhost")
        and (first.port or 5432) == (second.port or 5432)
        and first.path.rstrip("/") == second.path.rstrip("/")
    )


def _without_password(message: str, url: str) -> str:
    """`message` with `url`'s password (if any) masked, wherever a driver may have put it."""
    password = urlsplit(url).password if is_postgres_url(url) else None
    if password:
        message = message.replace(url, masked_url(url)).replace(password, "***")
    return message


def _os_user() -> str:
    """Who runs the command, for the audit log."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return f"uid {os.getuid()}"
