"""Tenants authenticate with `X-Api-Key`; the gateway keeps only hashes of keys.

Where a tenant's keys come from (docs/configuration.md#tenant-keys):

- the config: `api_key` (a secret reference, hashed with a per-process random key at start),
  `api_key_hash` (a salted scrypt or PBKDF2 hash, `gateway.keyhash`), or the legacy unsalted
  `api_key_sha256`;
- managed keys, made by `invoice-gateway tenant add | rotate-key` and kept in the store as
  token-shaped rows `tenant-key:<tenant>:<key_id>` holding a salted hash, so every replica sees
  them. The directory reads them again every few seconds, and on an unknown key at most once a
  second, so a revocation reaches every replica within seconds.

A managed key reads `igw_<key_id>_<secret>`: its id says which hash to check, so an unknown key
costs one slow hash, not one per key. Verified keys are remembered (an HMAC of the key under a
per-process random key → tenant, bounded), so the slow hash is paid once per key and process.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import secrets
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, Protocol

import structlog

from gateway.clock import Clock, Periodic, SystemClock
from gateway.config import TenantConfig
from gateway.errors import Unauthenticated
from gateway.keyhash import KeyHash, hash_key, parse_key_hash
from gateway.outbox.submissions import AuditEntry
from gateway.upstream.auth.tokens import StoredToken

log = structlog.get_logger("gateway.edge.tenants")

API_KEY_HEADER = "X-Api-Key"
#: Token rows under this prefix hold managed tenant keys: `tenant-key:<tenant>:<key_id>`.
KEY_ROW_PREFIX: Final = "tenant-key:"
#: Managed keys look like `igw_<key_id>_<secret>`.
MANAGED_KEY_PREFIX: Final = "igw_"
_MANAGED = re.compile(r"^igw_([0-9a-f]{12})_[A-Za-z0-9_-]{20,}$")
#: What a row without an expiry says as its lifetime (a StoredToken needs one): 100 years.
NO_EXPIRY: Final = 100 * 365 * 86400.0
#: Keys with a config key, as opposed to managed keys' ids.
CONFIG_KEY: Final = "config"

#: How often the store's key rows are read again; on an unknown key, at most this often.
REFRESH_INTERVAL: Final = 5.0
MISS_REFRESH_INTERVAL: Final = 1.0
#: Verified (and refused) keys remembered per process.
CACHE_SIZE: Final = 10_000
#: Slow hashes computed at once (in threads), so a flood of wrong keys cannot take every core.
SLOW_HASHES_AT_ONCE: Final = 2


class KeyRows(Protocol):
    """Where managed keys are kept: the gateway's store (`Store.token_rows`)."""

    async def token_rows(self) -> Sequence[tuple[str, StoredToken]]: ...


@dataclass(frozen=True, slots=True)
class ManagedKey:
    """One managed key's record: only its salted hash, never the key."""

    tenant: str
    key_id: str
    hash: str | None
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None
    created_by: str | None = None
    revoked_by: str | None = None

    @property
    def row_key(self) -> str:
        return f"{KEY_ROW_PREFIX}{self.tenant}:{self.key_id}"

    def active(self, now: float) -> bool:
        return (
            self.hash is not None
            and self.revoked_at is None
            and (self.expires_at is None or now < self.expires_at)
        )

    def state(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"

    def revoked(self, at: float, actor: str) -> ManagedKey:
        """This key revoked: its hash is dropped, the record stays for the listing."""
        return replace(self, hash=None, revoked_at=at, revoked_by=actor)

    def to_token(self) -> StoredToken:
        record = {
            "tenant": self.tenant,
            "key_id": self.key_id,
            "hash": self.hash,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "created_by": self.created_by,
            "revoked_by": self.revoked_by,
        }
        lifetime = (
            max(1.0, self.expires_at - self.created_at)
            if self.expires_at is not None
            else NO_EXPIRY
        )
        return StoredToken(json.dumps(record, sort_keys=True), self.created_at, lifetime)

    @classmethod
    def from_row(cls, key: str, token: StoredToken) -> ManagedKey | None:
        """The record in a token row, or None when the row is not a (readable) managed key."""
        if not key.startswith(KEY_ROW_PREFIX):
            return None
        try:
            record: dict[str, Any] = json.loads(token.value)
            return cls(
                tenant=str(record["tenant"]),
                key_id=str(record["key_id"]),
                hash=record.get("hash"),
                created_at=float(record["created_at"]),
                expires_at=_float(record.get("expires_at")),
                revoked_at=_float(record.get("revoked_at")),
                created_by=record.get("created_by"),
                revoked_by=record.get("revoked_by"),
            )
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring an unreadable managed tenant key row", row=key)
            return None

    def to_json(self, now: float) -> dict[str, Any]:
        """What `tenant list` shows: never the hash."""
        return {
            "tenant": self.tenant,
            "key_id": self.key_id,
            "state": self.state(now),
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "created_by": self.created_by,
            "revoked_by": self.revoked_by,
        }


def _float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def new_managed_key(
    tenant: str, *, now: float, actor: str, expires_at: float | None = None
) -> tuple[str, ManagedKey]:
    """A strong random key (shown once) and the record holding only its salted hash."""
    key_id = secrets.token_hex(6)
    key = f"{MANAGED_KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    record = ManagedKey(
        tenant=tenant,
        key_id=key_id,
        hash=hash_key(key),
        created_at=now,
        expires_at=expires_at,
        created_by=actor,
    )
    return key, record


class KeyStore(KeyRows, Protocol):
    """What key changes need of the store: its token rows and its audit log."""

    async def save_token(self, key: str, token: StoredToken) -> None: ...

    async def record_audit(self, entry: AuditEntry) -> AuditEntry: ...


class KeyChangeRefused(ValueError):
    """A key change that cannot be made as asked (the message says why)."""


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A new managed key (the only time the key itself exists) and what the change did."""

    api_key: str
    record: ManagedKey
    previous_key_ids: tuple[str, ...]
    previous_expire_at: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant": self.record.tenant,
            "key_id": self.record.key_id,
            "api_key": self.api_key,
            "expires_at": self.record.expires_at,
            "previous_key_ids": list(self.previous_key_ids),
            "previous_expire_at": self.previous_expire_at,
        }


async def issue_key(
    store: KeyStore,
    tenant: str,
    *,
    actor: str,
    role: str,
    now: float,
    rotate: bool,
    overlap: float | None = None,
    expires: float | None = None,
) -> IssuedKey:
    """Make a new managed key of `tenant` and store its hash; audited. Not `rotate` (an add):
    refused while the tenant has valid managed keys. `rotate` with `overlap`: the valid keys
    before it expire `overlap` seconds from `now` (without: they stay valid until revoked)."""
    previous = [k for k in await managed_keys(store) if k.tenant == tenant and k.active(now)]
    if previous and not rotate:
        raise KeyChangeRefused(
            f"tenant {tenant!r} has managed keys already "
            f"({', '.join(k.key_id for k in previous)}); rotate its key instead"
        )
    ends = None if overlap is None else now + overlap
    if ends is not None:
        for old in previous:
            if old.expires_at is None or old.expires_at > ends:
                await store.save_token(old.row_key, replace(old, expires_at=ends).to_token())
    expires_at = None if expires is None else now + expires
    key, record = new_managed_key(tenant, now=now, actor=actor, expires_at=expires_at)
    await store.save_token(record.row_key, record.to_token())
    issued = IssuedKey(key, record, tuple(k.key_id for k in previous), ends)
    details: dict[str, Any] = {"tenant": tenant, "key_id": record.key_id}
    if rotate:
        details |= {"previous_key_ids": list(issued.previous_key_ids), "previous_expire_at": ends}
    await store.record_audit(
        AuditEntry(
            actor=actor,
            role=role,
            action="tenant.key.rotate" if rotate else "tenant.key.add",
            details=details,
        )
    )
    return issued


async def revoke_keys(
    store: KeyStore,
    tenant: str,
    *,
    actor: str,
    role: str,
    now: float,
    key_id: str | None = None,
) -> list[str]:
    """Revoke `tenant`'s managed key `key_id` (None: all of them); audited. The ids revoked."""
    keys = [k for k in await managed_keys(store) if k.tenant == tenant and k.revoked_at is None]
    if key_id is not None:
        keys = [k for k in keys if k.key_id == key_id]
        if not keys:
            raise KeyChangeRefused(f"tenant {tenant!r} has no unrevoked managed key {key_id!r}")
    if not keys:
        raise KeyChangeRefused(f"tenant {tenant!r} has no unrevoked managed keys")
    for key in keys:
        await store.save_token(key.row_key, key.revoked(now, actor).to_token())
    revoked = [k.key_id for k in keys]
    await store.record_audit(
        AuditEntry(
            actor=actor,
            role=role,
            action="tenant.key.revoke",
            details={"tenant": tenant, "key_ids": revoked},
        )
    )
    return revoked


async def managed_keys(rows: KeyRows) -> list[ManagedKey]:
    """Every managed key record in the store, oldest first."""
    found = [ManagedKey.from_row(key, token) for key, token in await rows.token_rows()]
    return sorted((k for k in found if k is not None), key=lambda k: (k.created_at, k.key_id))


class _Bounded:
    """A least-recently-used map of at most `size` entries."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[bytes, tuple[str, str]] = OrderedDict()

    def get(self, tag: bytes) -> tuple[str, str] | None:
        found = self._items.get(tag)
        if found is not None:
            self._items.move_to_end(tag)
        return found

    def put(self, tag: bytes, value: tuple[str, str]) -> None:
        self._items[tag] = value
        self._items.move_to_end(tag)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def pop(self, tag: bytes) -> None:
        self._items.pop(tag, None)

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


class TenantDirectory:
    """Which tenant owns a presented key."""

    def __init__(
        self,
        tenants: Sequence[TenantConfig],
        *,
        keys: KeyRows | None = None,
        clock: Clock | None = None,
        refresh_interval: float = REFRESH_INTERVAL,
        miss_refresh_interval: float = MISS_REFRESH_INTERVAL,
        cache_size: int = CACHE_SIZE,
    ) -> None:
        self._clock = clock or SystemClock()
        self._keys = keys
        self._miss_refresh_interval = miss_refresh_interval
        # Keys from secret references are kept as HMACs under this process's own random key:
        # not reversible, not comparable across processes, and the plaintext is not kept.
        self._pepper = secrets.token_bytes(32)
        self._configure(tenants)
        self._managed: dict[str, ManagedKey] = {}
        self._version = ""
        self._verified = _Bounded(cache_size)
        self._refused = _Bounded(cache_size)
        self._last_refresh = float("-inf")
        self._refresh_lock = asyncio.Lock()
        self._slow_hashes = asyncio.Semaphore(SLOW_HASHES_AT_ONCE)
        self._periodic = (
            Periodic(
                "tenant-keys",
                self.refresh,
                interval=refresh_interval,
                clock=self._clock,
                failure="cannot read the managed tenant keys; using the last ones read",
            )
            if keys is not None
            else None
        )

    def _configure(self, tenants: Sequence[TenantConfig]) -> None:
        """The tenants and the keys the configuration gives them."""
        self._tenants = {t.id for t in tenants}
        self._fast: list[tuple[bytes, bool, str]] = []  # (digest, is_legacy_sha256, tenant)
        self._slow: list[tuple[KeyHash, str]] = []
        for tenant in tenants:
            if tenant.api_key is not None:
                self._fast.append((self._tag(tenant.api_key.value()), False, tenant.id))
            elif tenant.api_key_sha256 is not None:
                self._fast.append((bytes.fromhex(tenant.api_key_sha256), True, tenant.id))
            elif tenant.api_key_hash is not None:
                self._slow.append((parse_key_hash(tenant.api_key_hash), tenant.id))
            elif self._keys is not None:
                log.info(
                    "tenant has no key in the configuration: only its managed keys are valid",
                    tenant=tenant.id,
                )

    def reconfigure(self, tenants: Sequence[TenantConfig]) -> None:
        """Take up the tenants of a reloaded configuration: their keys count from now on, a key
        no longer configured stops working at once (remembered checks are forgotten), and a
        tenant no longer configured loses its managed keys."""
        self._configure(tenants)
        self._managed = {k: v for k, v in self._managed.items() if v.tenant in self._tenants}
        self._verified.clear()
        self._refused.clear()
        self._version = ""  # the next read of managed keys filters them by the new tenants

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._periodic is not None:
            self._periodic.start()

    async def stop(self) -> None:
        if self._periodic is not None:
            await self._periodic.stop()

    async def refresh(self) -> None:
        """Read the managed keys again (a revocation elsewhere takes effect here now)."""
        if self._keys is None:
            return
        async with self._refresh_lock:
            self._last_refresh = self._clock.monotonic()
            found = await managed_keys(self._keys)
            usable = {k.key_id: k for k in found if k.tenant in self._tenants}
            version = json.dumps([k.to_json(0) for k in usable.values()], sort_keys=True)
            if version != self._version:
                now = self._clock.wall()
                log.info(
                    "managed tenant keys read",
                    active=sum(k.active(now) for k in usable.values()),
                    total=len(usable),
                )
                self._managed = usable
                self._version = version
                self._refused.clear()

    @property
    def managed(self) -> dict[str, ManagedKey]:
        """The managed keys as last read, by key id."""
        return dict(self._managed)

    # -- authentication -----------------------------------------------------------------------

    async def authenticate(self, api_key: str | None) -> str:
        """The tenant id owning `api_key`; raises `Unauthenticated` otherwise."""
        if not api_key:
            raise Unauthenticated(f"send your tenant API key in the {API_KEY_HEADER} header")
        tag = self._tag(api_key)
        remembered = self._verified.get(tag)
        if remembered is not None:
            if self._still_valid(*remembered):
                return remembered[0]
            self._verified.pop(tag)
        tenant = self._fast_match(api_key, tag)
        if tenant is not None:
            self._verified.put(tag, (tenant, CONFIG_KEY))
            return tenant
        if self._refused.get(tag) is None:
            found = await self._slow_match(api_key)
            if found is None and await self._refresh_on_miss():
                found = await self._slow_match(api_key)
            if found is not None:
                self._verified.put(tag, found)
                return found[0]
            self._refused.put(tag, ("", ""))
        elif await self._refresh_on_miss():
            return await self.authenticate(api_key)
        raise Unauthenticated(
            f"the {API_KEY_HEADER} sent is not a known tenant key; check for typos or ask "
            "the gateway operator for your key"
        )

    def _tag(self, api_key: str) -> bytes:
        return hmac.new(self._pepper, api_key.encode(), hashlib.sha256).digest()

    def _still_valid(self, tenant: str, key_ref: str) -> bool:
        if key_ref == CONFIG_KEY:
            return True
        managed = self._managed.get(key_ref)
        return (
            managed is not None and managed.tenant == tenant and managed.active(self._clock.wall())
        )

    def _fast_match(self, api_key: str, tag: bytes) -> str | None:
        legacy = hashlib.sha256(api_key.encode()).digest()
        tenant: str | None = None
        # Compare against every digest in constant time, so timing says nothing about keys.
        for known, is_legacy, tenant_id in self._fast:
            if hmac.compare_digest(known, legacy if is_legacy else tag):
                tenant = tenant_id
        return tenant

    async def _slow_match(self, api_key: str) -> tuple[str, str] | None:
        """Check every salted config hash, and the managed key the key names (if any)."""
        candidates: list[tuple[KeyHash, str, str]] = [
            (known, tenant, CONFIG_KEY) for known, tenant in self._slow
        ]
        shape = _MANAGED.match(api_key)
        if shape is not None:
            managed = self._managed.get(shape.group(1))
            if managed is not None and managed.active(self._clock.wall()):
                assert managed.hash is not None
                candidates.append((parse_key_hash(managed.hash), managed.tenant, managed.key_id))
        if not candidates:
            return None
        async with self._slow_hashes:
            results = await asyncio.to_thread(
                lambda: [known.verify(api_key) for known, _, _ in candidates]
            )
        found: tuple[str, str] | None = None
        for ok, (_, tenant, key_ref) in zip(results, candidates, strict=True):
            if ok:
                found = (tenant, key_ref)
        return found

    async def _refresh_on_miss(self) -> bool:
        """Read the store's keys again if that was not done within the last second; whether
        anything changed (a key added at another replica is valid here at once)."""
        if self._keys is None:
            return False
        if self._clock.monotonic() - self._last_refresh < self._miss_refresh_interval:
            return False
        before = self._version
        try:
            await self.refresh()
        except Exception as exc:  # a store hiccup: refuse this key, as with no change
            log.warning("cannot read the managed tenant keys", error=str(exc))
            return False
        return self._version != before
