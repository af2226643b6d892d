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
from gateway.edge.tenants import ManagedKey, managed_keys, new_managed_key
from gateway.errors import ConfigError, GatewayError
from gateway.keyhash import PBKDF2, SCRYPT, hash_key
from gateway.outbox.store import Store, open_store
from gateway.outbox.submissions import AuditEntry
from gateway.quantities import parse_duration

__all__ = ["configure_tenant"]

DEFAULT_CONFIG: Final = "config/gateway.yaml"
EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2

DESCRIPTION: Final = """\
Managed tenant API keys: made here, printed once, kept in the store only as a salted
scrypt hash. Every replica sharing the store accepts a new key at once (an unknown key
makes it read the store again, at most once a second) and refuses a revoked one within
about five seconds. A tenant must be in the configuration (tenants[]) to get keys; a key
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


async def _of_tenant(store: Store, tenant: str) -> list[ManagedKey]:
    return [k for k in await managed_keys(store) if k.tenant == tenant]


async def _add(store: Store, args: argparse.Namespace, _known: set[str]) -> dict[str, Any]:
    now = time.time()
    active = [k for k in await _of_tenant(store, args.tenant) if k.active(now)]
    if active:
        raise UsageError(
            f"tenant {args.tenant!r} has managed keys already "
            f"({', '.join(k.key_id for k in active)}); use `tenant rotate-key {args.tenant}`"
        )
    return await _issue(store, args, now, action="tenant.key.add", details={})


async def _rotate(store: Store, args: argparse.Namespace, _known: set[str]) -> dict[str, Any]:
    now = time.time()
    actor = _os_user()
    previous = [k for k in await _of_tenant(store, args.tenant) if k.active(now)]
    ends = None if args.overlap is None else now + args.overlap
    if ends is not None:
        for old in previous:
            if old.expires_at is None or old.expires_at > ends:
                await store.save_token(
                    old.row_key, ManagedKey(**{**_fields(old), "expires_at": ends}).to_token()
                )
    details = {"previous_key_ids": [k.key_id for k in previous], "previous_expire_at": ends}
    return await _issue(store, args, now, action="tenant.key.rotate", details=details, actor=actor)


async def _issue(
    store: Store,
    args: argparse.Namespace,
    now: float,
    *,
    action: str,
    details: dict[str, Any],
    actor: str | None = None,
) -> dict[str, Any]:
    actor = actor or _os_user()
    expires_at = None if args.expires is None else now + args.expires
    key, record = new_managed_key(args.tenant, now=now, actor=actor, expires_at=expires_at)
    await store.save_token(record.row_key, record.to_token())
    await _audit(store, actor, action, args.tenant, {"key_id": record.key_id, **details})
    return {"tenant": args.tenant, "key_id": record.key_id, "api_key": key, **details}


async def _revoke(store: Store, args: argparse.Namespace, _known: set[str]) -> dict[str, Any]:
    now = time.time()
    actor = _os_user()
    keys = [k for k in await _of_tenant(store, args.tenant) if k.revoked_at is None]
    if args.key_id is not None:
        keys = [k for k in keys if k.key_id == args.key_id]
        if not keys:
            raise UsageError(
                f"tenant {args.tenant!r} has no unrevoked managed key {args.key_id!r} "
                "(see `tenant list`)"
            )
    if not keys:
        raise UsageError(f"tenant {args.tenant!r} has no unrevoked managed keys")
    for key in keys:
        await store.save_token(key.row_key, key.revoked(now, actor).to_token())
    revoked = [k.key_id for k in keys]
    await _audit(store, actor, "tenant.key.revoke", args.tenant, {"key_ids": revoked})
    return {"tenant": args.tenant, "revoked_key_ids": revoked}


async def _list(store: Store, args: argparse.Namespace, known: set[str]) -> dict[str, Any]:
    now = time.time()
    keys = [
        k.to_json(now)
        for k in await managed_keys(store)
        if k.tenant in known and (args.tenant is None or k.tenant == args.tenant)
    ]
    return {"keys": keys}


async def _audit(
    store: Store, actor: str, action: str, tenant: str, details: dict[str, Any]
) -> None:
    await store.record_audit(
        AuditEntry(
            actor=actor, role="operator", action=action, details={"tenant": tenant, **details}
        )
    )


def _fields(key: ManagedKey) -> dict[str, Any]:
    return {name: getattr(key, name) for name in key.__slots__}


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
