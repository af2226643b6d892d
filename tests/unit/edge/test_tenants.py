"""Tenants authenticate with X-Api-Key; only digests are kept."""

from __future__ import annotations

import hashlib

import pytest

from gateway.config import TenantConfig
from gateway.edge.tenants import TenantDirectory
from gateway.errors import Unauthenticated


def directory() -> TenantDirectory:
    digest = hashlib.sha256(b"acme-key").hexdigest()
    return TenantDirectory([TenantConfig(id="acme", api_key_sha256=digest)])


def test_known_key_names_the_tenant() -> None:
    """The right key authenticates as its tenant."""
    assert "acme" == directory().authenticate("acme-key")


@pytest.mark.parametrize("key", [None, "", "acme-key ", "other"])
def test_missing_or_unknown_key(key: str | None) -> None:
    """A missing or wrong key is refused with a hint at the header to use."""
    with pytest.raises(Unauthenticated, match="X-Api-Key"):
        directory().authenticate(key)
