"""`invoice-gateway migrate` and `invoice-gateway store copy`: the store itself, not through a
running gateway (docs/postgresql.md).

Both open stores directly by URL. The work of a copy is `gateway.outbox.store.copy`; this
module parses, opens, shows progress (on stderr, as the on-call commands do) and prints.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
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
from gateway.outbox.store import Store, is_postgres_url, masked_url, open_store
from gateway.outbox.store.copy import DEFAULT_BATCH, CopyReport, copy_store
from gateway.quantities import whole_number

__all__ = ["configure_migrate", "configure_store"]

STORE_URL_ENV: Final = "GATEWAY_STORE_URL"
DEFAULT_CONFIG: Final = "config/gateway.yaml"

EXIT_CODES_EPILOG: Final = """\
exit status (scripts can rely on it):
  0  success
  1  a store cannot be opened, read or written, a copy was interrupted (run it
     again: it goes on where it stopped), or the copy's verification found
     differences
  2  usage error: a bad URL or option, --from and --to the same store, no
     source file, an invalid configuration

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
    parser.add_argument("--config", metavar="PATH", help="configuration file (YAML)")
    parser.add_argument(
        "--store-url", type=_store_url, metavar="URL", help="the store (default: the config's)"
    )
    parser.set_defaults(handler=cmd_migrate)


def configure_store(parser: argparse.ArgumentParser) -> None:
    """The `store` group (`store copy`) on `parser`."""
    _describe(parser, "Work on stores directly, with no gateway running on them.")
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
    copy.add_argument(
        "--batch",
        type=whole_number(1, 10_000),
        default=DEFAULT_BATCH,
        metavar="N",
        help=f"submissions per transaction (default {DEFAULT_BATCH})",
    )
    copy.add_argument("--json", action="store_true", help="the summary as one JSON line")
    copy.set_defaults(handler=cmd_copy)


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
