"""Tenants authenticate with `X-Api-Key`; the gateway keeps only SHA-256 digests of keys."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from gateway.config import TenantConfig
from gateway.errors import Unauthenticated

API_KEY_HEADER = "X-Api-Key"


class TenantDirectory:
    def __init__(self, tenants: Sequence[TenantConfig]) -> None:
        self._by_digest = {bytes.fromhex(t.key_digest()): t.id for t in tenants}

    def authenticate(self, api_key: str | None) -> str:
        """The tenant id owning `api_key`; raises `Unauthenticated` otherwise."""
        if not api_key:
            raise Unauthenticated(f"send your tenant API key in the {API_KEY_HEADER} header")
        digest = hashlib.sha256(api_key.encode()).digest()
        tenant: str | None = None
        # Compare against every digest in constant time, so timing says nothing about keys.
        for known, tenant_id in self._by_digest.items():
            if hmac.compare_digest(known, digest):
                tenant = tenant_id
        if tenant is None:
            raise Unauthenticated(
                f"the {API_KEY_HEADER} sent is not a known tenant key; check for typos or ask "
                "the gateway operator for your key"
            )
        return tenant
