"""The gateway's durable state, behind protocols a PostgreSQL store can implement too.

    protocol      `OutboxStore` and `Store`: what the outbox relies on, and the isolation each
                  method needs
    sqlite        the embedded default: one writer, WAL, `synchronous=FULL`
    group_commit  concurrent writes sharing one fsync, each failing alone, handed to the
                  writer's own thread once per batch
    postgres      several replicas on one PostgreSQL database (asyncpg): row locks, `SKIP
                  LOCKED` claims, advisory locks, `LISTEN/NOTIFY`
    urls          store URLs: which store, and how to show one without its password
    sealing       encryption at rest: AES-256-GCM of bodies and answers (docs/encryption.md)
    rows          rows as both stores write and read them (sealed columns, audit rows, cursors)
    copy          `invoice-gateway store copy`: everything from one store into another
    backup        `invoice-gateway store backup`: an online, checked copy of a SQLite store
    callback_queue  the callback events' queue in both stores, written by triggers

Callers see only the protocols and the dataclasses in `gateway.outbox.submissions`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from gateway.config import OutboxConfig, StoreConfig
from gateway.errors import ConfigError, StoreError
from gateway.outbox.store.protocol import Admission, OutboxCounts, OutboxStore, Resealed, Store
from gateway.outbox.store.sealing import Sealer
from gateway.outbox.store.sqlite import SqliteStore
from gateway.outbox.store.urls import is_postgres_url, masked_url
from gateway.upstream.auth.tokens import StoredToken, TokenStore

__all__ = [
    "Admission",
    "OutboxCounts",
    "OutboxStore",
    "Resealed",
    "Sealer",
    "Store",
    "StoredToken",
    "TokenStore",
    "is_postgres_url",
    "masked_url",
    "open_store",
    "sealer_of",
]


async def open_store(
    url: str,
    outbox: OutboxConfig | None = None,
    settings: StoreConfig | None = None,
    *,
    migrate: bool | None = None,
    environ: Mapping[str, str] | None = None,
) -> Store:
    """Open the store at `url` (`sqlite:///PATH` or `postgresql://…`).

    Encryption at rest: the keys of `settings.encryption`, else of the variables
    `GATEWAY_ENCRYPTION_KEY` and `GATEWAY_ENCRYPTION_PREVIOUS_KEYS` (in `environ`, default the
    process's). `StoreError` when a key is malformed, or when the store holds values sealed
    under a key id none of them has (every read of those would fail).

    `migrate`: bring an older schema up to date (default: as `settings.migrate` says, `auto`);
    when false, an older schema raises `StoreError` saying to run `invoice-gateway migrate`. A
    newer schema than this gateway knows always raises `StoreError`.
    """
    outbox = outbox or OutboxConfig()
    settings = settings or StoreConfig()
    if migrate is None:
        migrate = settings.migrate == "auto"
    sealer = sealer_of(settings, os.environ if environ is None else environ)
    store: Store
    if is_postgres_url(url):
        from gateway.outbox.store.postgres import PostgresStore  # asyncpg only when used

        store = await PostgresStore.open(url, settings, migrate=migrate, sealer=sealer)
    else:
        store = await SqliteStore.open(
            url.removeprefix("sqlite:///"),
            synchronous=outbox.synchronous,
            group_commit=outbox.group_commit,
            commit_window=outbox.commit_window,
            batch_cap=outbox.commit_batch_cap,
            migrate=migrate,
            sealer=sealer,
        )
    try:
        sealer.check_key_ids(await store.key_usage(), masked_url(url))
    except BaseException:
        await store.close()
        raise
    return store


def sealer_of(settings: StoreConfig, environ: Mapping[str, str]) -> Sealer:
    """The sealer of the keys `settings` (else `environ`) configure; `StoreError` naming a
    malformed one."""
    encryption = settings.encryption
    try:
        return Sealer.from_settings(
            encryption.key.value() if encryption.key is not None else None,
            [ref.value() for ref in encryption.previous_keys],
            environ,
        )
    except ConfigError as exc:
        raise StoreError("; ".join(exc.problems)) from None
