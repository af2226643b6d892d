"""The gateway's durable state, behind protocols a PostgreSQL store can implement too.

    protocol      `OutboxStore` and `Store`: what the outbox relies on, and the isolation each
                  method needs
    sqlite        the embedded default: one writer, WAL, `synchronous=FULL`
    group_commit  concurrent writes sharing one fsync, each failing alone
    postgres      several replicas on one PostgreSQL database (asyncpg): row locks, `SKIP
                  LOCKED` claims, advisory locks, `LISTEN/NOTIFY`
    urls          store URLs: which store, and how to show one without its password

Callers see only the protocols and the dataclasses in `gateway.outbox.submissions`.
"""

from __future__ import annotations

from gateway.config import OutboxConfig, StoreConfig
from gateway.outbox.store.protocol import Admission, OutboxCounts, OutboxStore, Store
from gateway.outbox.store.sqlite import SqliteStore
from gateway.outbox.store.urls import is_postgres_url, masked_url
from gateway.upstream.auth.tokens import StoredToken, TokenStore

__all__ = [
    "Admission",
    "OutboxCounts",
    "OutboxStore",
    "Store",
    "StoredToken",
    "TokenStore",
    "is_postgres_url",
    "masked_url",
    "open_store",
]


async def open_store(
    url: str,
    outbox: OutboxConfig | None = None,
    settings: StoreConfig | None = None,
    *,
    migrate: bool | None = None,
) -> Store:
    """Open the store at `url` (`sqlite:///PATH` or `postgresql://…`).

    `migrate`: bring an older schema up to date (default: as `settings.migrate` says, `auto`);
    when false, an older schema raises `StoreError` saying to run `invoice-gateway migrate`. A
    newer schema than this gateway knows always raises `StoreError`.
    """
    outbox = outbox or OutboxConfig()
    settings = settings or StoreConfig()
    if migrate is None:
        migrate = settings.migrate == "auto"
    if is_postgres_url(url):
        from gateway.outbox.store.postgres import PostgresStore  # asyncpg only when used

        return await PostgresStore.open(url, settings, migrate=migrate)
    return await SqliteStore.open(
        url.removeprefix("sqlite:///"),
        synchronous=outbox.synchronous,
        group_commit=outbox.group_commit,
        commit_window=outbox.commit_window,
        batch_cap=outbox.commit_batch_cap,
        migrate=migrate,
    )
