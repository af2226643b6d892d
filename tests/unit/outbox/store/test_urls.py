"""Store URLs as errors and logs may show them: never with the password."""

from __future__ import annotations

import pytest

from gateway.outbox.store.urls import is_postgres_url, masked_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://gw:s3cret@db:5432/gateway", "postgresql://gw:***@db:5432/gateway"),
        (
            "postgres://gw:s3cret@[::1]:5432/g?sslmode=require",
            "postgres://gw:***@[::1]:5432/g?sslmode=require",
        ),
        ("postgresql://gw:p@ss@db:notaport/g", "postgresql://gw:***@db:notaport/g"),
        ("postgresql://gw@db/gateway", "postgresql://gw@db/gateway"),
        ("sqlite:///./data/gateway.db", "sqlite:///./data/gateway.db"),
    ],
)
def test_the_password_is_masked(url: str, shown: str) -> None:
    assert shown == masked_url(url)


def test_which_urls_are_postgres() -> None:
    assert is_postgres_url("postgresql://db/g")
    assert is_postgres_url("postgres://db/g")
    assert not is_postgres_url("sqlite:///x.db")
