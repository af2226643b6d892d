"""The gateway's durable state, behind protocols a PostgreSQL store can implement too.

    protocol      `OutboxStore` and `Store`: what the outbox relies on, and the isolation each
                  method needs
    sqlite        the embedded default: one writer, WAL, `synchronous=FULL`
    group_commit  concurrent writes sharing one fsync, each failing alone

Callers see only the protocols and the dataclasses in `gateway.outbox.submissions`.
"""

from __future__ import annotations

from gateway.config import OutboxConfig
from gateway.outbox.store.protocol import Admission, OutboxCounts, OutboxStore, Store
from gateway.outbox.store.sqlite import SqliteStore
from gateway.upstream.auth.tokens import StoredToken, TokenStore

__all__ = [
    "Admission",
    "OutboxCounts",
    "OutboxStore",
    "Store",
    "StoredToken",
    "TokenStore",
    "open_store",
]


async def open_store(url: str, outbox: OutboxConfig | None = None) -> Store:
    """Open (creating and migrating as needed) the store at `url`."""
    outbox = outbox or OutboxConfig()
    return await SqliteStore.open(
        url.removeprefix("sqlite:///"),
        synchronous=outbox.synchronous,
        group_commit=outbox.group_commit,
        commit_window=outbox.commit_window,
        batch_cap=outbox.commit_batch_cap,
    )
