"""`invoice-gateway tenant add | rotate-key | revoke | list | hash-key`: managed tenant API keys
(docs/configuration.md#tenant-keys).

A managed key is made here, printed once, and kept in the gateway's store only as a salted
hash (a token-shaped row `tenant-key:<tenant>:<key_id>`), so every replica sharing the store
sees it within seconds. The command opens the store directly, as `invoice-gateway migrate`
does; gateways may keep running. Every action is recorded in the audit log (actor: the OS user).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
import time
from typing import Any, Final

from gateway.config import CONFIG_PATH_ENV, GatewayConfig, load_config
from gateway.edge.tenants import KeyChangeRefused, issue_key, managed_keys, revoke_keys
from gateway.errors import ConfigError, GatewayError
from gateway.keyhash import PBKDF2, SCRYPT, hash_key
from gateway.outbox.store import Store, open_store
from gateway.quantities import parse_duration

__all__ = ["configure_tenant"]

DEFAULT_CONFIG: Final = "config/gateway.yaml"
EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2

DESCRIPTION: Final = """\
Managed tenant API keys: made here, printed once, kept in the store only as a salted
scrypt hash. Every replica sharing the store accepts a new key within a second (an
unknown key makes it read the store again, at most once a second) and refuses a revoked
one within about five seconds. A tenant must be in the configuration (tenants[]) to get keys; a key
in the configuration (api_key, api_key_hash, api_key_sha256) stays valid beside them.

The store: the configuration's store_url (--config, $GATEWAY_CONFIG or
config/gateway.yaml; $GATEWAY_STORE_URL overrides it).

exit status: 0 success, 1 the store cannot be used, 2 usage (unknown tenant, no such key,
an invalid configuration)."""


class UsageError(Exception):
    """What the operator asked cannot be done as asked (exit status 2)."""


def configure_tenant(parser: argparse.ArgumentParser) -> None:
    """The `tenant` group on `parser`."""
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    commands = parser.add_subparsers(dest="tenant_command", required=True, metavar="COMMAND")

    add = commands.add_parser("add", help="make a tenant's first managed key (printed once)")
    add.add_argument("tenant", metavar="ID", help="a tenant id from the configuration")
    add.add_argument("--expires", type=_duration, metavar="DURATION", help="e.g. 90d")

    rotate = commands.add_parser(
        "rotate-key",
        help="make a new key; the old ones stay valid until revoked (or --overlap ends)",
    )
    rotate.add_argument("tenant", metavar="ID")
    rotate.add_argument(
        "--overlap",
        type=_duration,
        metavar="DURATION",
        help="the old keys expire this long from now (default: until revoked)",
    )
    rotate.add_argument("--expires", type=_duration, metavar="DURATION", help="the new key's")

    revoke = commands.add_parser("revoke", help="revoke a tenant's managed keys (all, or one)")
    revoke.add_argument("tenant", metavar="ID")
    revoke.add_argument("--key-id", metavar="K", help="only this key (see `tenant list`)")

    listing = commands.add_parser("list", help="the managed keys (never the keys themselves)")
    listing.add_argument("tenant", nargs="?", metavar="ID")

    hashing = commands.add_parser(
        "hash-key",
        help="print a salted hash of a key read from stdin, for tenants[].api_key_hash",
    )
    hashing.add_argument("--scheme", choices=(SCRYPT, PBKDF2), default=SCRYPT)

    for sub in (add, rotate, revoke, listing):
        sub.add_argument("--config", metavar="PATH", help="configuration file (YAML)")
        sub.add_argument("--json", action="store_true", help="the result as JSON")
    parser.set_defaults(handler=cmd_tenant)


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_tenant(args: argparse.Namespace) -> int:
    if args.tenant_command == "hash-key":
        key = sys.stdin.readline().strip()
        if not key:
            print("invoice-gateway tenant hash-key: give the key on stdin", file=sys.stderr)
            return EXIT_USAGE
        print(hash_key(key, args.scheme))
        return EXIT_OK
    path = args.config or os.environ.get(CONFIG_PATH_ENV) or DEFAULT_CONFIG
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"invoice-gateway: {path}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = asyncio.run(_run(config, args))
    except UsageError as exc:
        print(f"invoice-gateway tenant: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except GatewayError as exc:
        print(f"invoice-gateway tenant: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        _print(args.tenant_command, result)
    return EXIT_OK


async def _run(config: GatewayConfig, args: argparse.Namespace) -> dict[str, Any]:
    known = {t.id for t in config.tenants}
    if args.tenant is not None and args.tenant not in known:
        raise UsageError(
            f"tenant {args.tenant!r} is not in the configuration (tenants[]: "
            f"{', '.join(sorted(known))}); add it there first"
        )
    store = await open_store(config.store_url, config.outbox, config.store)
    try:
        actions = {"add": _add, "rotate-key": _rotate, "revoke": _revoke, "list": _list}
        return await actions[args.tenant_command](store, args, known)
    finally:
        await store.close()


async def _add(store: Store, args: argparse.Namespace, _known: set[str]) -> dict[str, Any]:
    return await _issue(store, args, rotate=False)


async def _rotate(store: Store, args: argparse.Namespace, _known: set[str]) -> dict[str, Any]:
    return await _issue(store, args, rotate=True)


async def _issue(store: Store, args: argparse.Namespace, *, rotate: bool) -> dict[str, Any]:
    try:
        issued = await issue_key(
            store,
            args.tenant,
            actor=_os_user(),
            role="operator",
            now=time.time(),
            rotate=rotate,
            overlap=getattr(args, "overlap", None),
            expires=args.expires,
        )
    except KeyChangeRefused as exc:
        raise UsageError(str(exc)) from None
    return issued.to_json()


async def _revoke(store: Store, args: argparse.Namespace, _known: set[str]) -> dict[str, Any]:
    try:
        revoked = await revoke_keys(
            store,
            args.tenant,
            actor=_os_user(),
            role="operator",
            now=time.time(),
            key_id=args.key_id,
        )
    except KeyChangeRefused as exc:
        raise UsageError(f"{exc} (see `tenant list`)") from None
    return {"tenant": args.tenant, "revoked_key_ids": revoked}


async def _list(store: Store, args: argparse.Namespace, known: set[str]) -> dict[str, Any]:
    now = time.time()
    keys = [
        k.to_json(now)
        for k in await managed_keys(store)
        if k.tenant in known and (args.tenant is None or k.tenant == args.tenant)
    ]
    return {"keys": keys}


def _print(command: str, result: dict[str, Any]) -> None:
    if command in ("add", "rotate-key"):
        print(f"new API key for tenant {result['tenant']} (key id {result['key_id']}):")
        print()
        print(f"  {result['api_key']}")
        print()
        print("It is shown this once and the gateway keeps only its salted hash: hand it over now.")
        if command == "rotate-key" and result["previous_key_ids"]:
            until = result["previous_expire_at"]
            when = (
                "until revoked (`tenant revoke ID --key-id K`)"
                if until is None
                else f"until {_iso(until)}"
            )
            print(f"The previous keys ({', '.join(result['previous_key_ids'])}) stay valid {when}.")
        return
    if command == "revoke":
        ids = ", ".join(result["revoked_key_ids"])
        print(
            f"revoked {ids} of tenant {result['tenant']}; every replica refuses them within seconds"
        )
        return
    keys = result["keys"]
    if not keys:
        print("no managed keys")
        return
    print(f"{'TENANT':<20} {'KEY ID':<14} {'STATE':<8} {'CREATED':<20} {'EXPIRES':<20} REVOKED")
    for key in keys:
        print(
            f"{key['tenant']:<20} {key['key_id']:<14} {key['state']:<8} "
            f"{_iso(key['created_at']):<20} {_iso(key['expires_at']):<20} "
            f"{_iso(key['revoked_at'])}"
        )


def _iso(at: float | None) -> str:
    if at is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def _os_user() -> str:
    """Who runs the command, for the audit log."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return f"uid {os.getuid()}"
