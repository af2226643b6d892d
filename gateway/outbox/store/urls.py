"""Store URLs: `sqlite:///PATH` (the embedded default) or `postgresql://USER@HOST:PORT/DB`."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = ["is_postgres_url", "masked_url"]


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def masked_url(url: str) -> str:
    """`url` with its password (if any) replaced by `***`: what errors and logs may show."""
    if not is_postgres_url(url):
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    # Everything after the last '@' of the authority is host and port, whatever they hold.
    address = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{address}"))
