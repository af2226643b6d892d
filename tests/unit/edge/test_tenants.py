"""Tenants authenticate with X-Api-Key; only hashes of keys are kept."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pytest

from gateway.config import SecretRef, TenantConfig
from gateway.edge.tenants import (
    KEY_ROW_PREFIX,
    ManagedKey,
    TenantDirectory,
    managed_keys,
    new_managed_key,
)
from gateway.errors import Unauthenticated
from gateway.keyhash import PBKDF2, SCRYPT, hash_key, parse_key_hash
from gateway.upstream.auth.tokens import StoredToken
from tests.support.fakes import FakeClock


class Rows:
    """A store's token rows, in memory."""

    def __init__(self) -> None:
        self.rows: dict[str, StoredToken] = {}
        self.reads = 0

    async def token_rows(self) -> Sequence[tuple[str, StoredToken]]:
        self.reads += 1
        return list(self.rows.items())

    def put(self, key: ManagedKey) -> None:
        self.rows[key.row_key] = key.to_token()


def directory() -> TenantDirectory:
    digest = hashlib.sha256(b"acme-key").hexdigest()
    return TenantDirectory([TenantConfig(id="acme", api_key_sha256=digest)])


async def test_known_key_names_the_tenant() -> None:
    """The right key authenticates as its tenant (legacy unsalted SHA-256)."""
    assert "acme" == await directory().authenticate("acme-key")


@pytest.mark.parametrize("key", [None, "", "acme-key ", "other"])
async def test_missing_or_unknown_key(key: str | None) -> None:
    """A missing or wrong key is refused with a hint at the header to use."""
    with pytest.raises(Unauthenticated, match="X-Api-Key"):
        await directory().authenticate(key)


@pytest.mark.parametrize("scheme", [SCRYPT, PBKDF2])
def test_hash_round_trip(scheme: str) -> None:
    """A salted hash verifies its key only; two hashes of one key differ (per-key salt)."""
    text = hash_key("s3cret", scheme)  # type: ignore[arg-type]
    assert text.startswith(f"{scheme}$")
    parsed = parse_key_hash(text)
    assert parsed.verify("s3cret")
    assert not parsed.verify("s3cret!")
    assert text != hash_key("s3cret", scheme)  # type: ignore[arg-type]
    assert parsed.encode() == text


@pytest.mark.parametrize(
    "text",
    [
        "sha256$abc",
        "scrypt$ln=14,r=8$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "scrypt$ln=30,r=8,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "pbkdf2-sha256$i=1000$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "pbkdf2-sha256$i=600000$AAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ],
)
def test_bad_hashes_are_config_errors(text: str) -> None:
    """A malformed or weak hash is refused when the config is read."""
    with pytest.raises(ValueError, match="api_key_hash"):
        TenantConfig(id="acme", api_key_hash=text)


def test_at_most_one_config_key() -> None:
    with pytest.raises(ValueError, match="at most one"):
        TenantConfig(id="acme", api_key_hash=hash_key("k"), api_key_sha256="0" * 64)
    assert TenantConfig(id="acme").api_key is None  # managed keys only


async def test_salted_config_hash_is_paid_once_per_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """`api_key_hash` authenticates; the slow hash runs once for a key, then the cache serves."""
    tenants = [
        TenantConfig(id="acme", api_key_hash=hash_key("acme-key")),
        TenantConfig(id="demo", api_key_hash=hash_key("demo-key", PBKDF2)),
    ]
    found = TenantDirectory(tenants)
    calls = 0
    real = type(parse_key_hash(tenants[0].api_key_hash or "")).derive

    def counting(self: object, key: str) -> bytes:
        nonlocal calls
        calls += 1
        return real(self, key)  # type: ignore[arg-type]

    monkeypatch.setattr(type(parse_key_hash(tenants[0].api_key_hash or "")), "derive", counting)
    assert "acme" == await found.authenticate("acme-key")
    assert "demo" == await found.authenticate("demo-key")
    first = calls
    for _ in range(5):
        assert "acme" == await found.authenticate("acme-key")
    assert first == calls
    # A wrong key is remembered as refused, too (while the keys do not change).
    with pytest.raises(Unauthenticated):
        await found.authenticate("nope")
    after_miss = calls
    with pytest.raises(Unauthenticated):
        await found.authenticate("nope")
    assert after_miss == calls


async def test_secret_ref_plaintext_not_kept() -> None:
    """A key from a secret reference is kept as an HMAC under a per-process key."""
    ref = SecretRef(env="TENANT_TEST_KEY")
    assert ref.resolve({"TENANT_TEST_KEY": "plain-key-123"}) is None
    found = TenantDirectory([TenantConfig(id="acme", api_key=ref)])
    assert "acme" == await found.authenticate("plain-key-123")
    assert b"plain-key-123" not in repr(vars(found)).encode()


async def test_managed_keys_rotate_and_revoke() -> None:
    """Two keys are valid after a rotation; a revoked or expired one is refused after the next
    read of the store, a new one at once (a miss reads the store again)."""
    clock = FakeClock(wall=1_000_000.0)
    rows = Rows()
    found = TenantDirectory(
        [TenantConfig(id="acme"), TenantConfig(id="demo")], keys=rows, clock=clock
    )
    await found.refresh()
    old, old_record = new_managed_key("acme", now=clock.wall(), actor="ops")
    rows.put(old_record)
    clock.advance(2)
    assert "acme" == await found.authenticate(old)  # the miss read the store
    new, new_record = new_managed_key("acme", now=clock.wall(), actor="ops")
    rows.put(new_record)
    clock.advance(2)
    assert "acme" == await found.authenticate(new)
    assert "acme" == await found.authenticate(old)
    rows.put(old_record.revoked(clock.wall(), "ops"))
    await found.refresh()
    with pytest.raises(Unauthenticated):
        await found.authenticate(old)
    assert "acme" == await found.authenticate(new)
    # Expiry (a rotation's overlap) ends a key without a revocation.
    rows.put(ManagedKey(**{**vars_of(new_record), "expires_at": clock.wall() + 10}))
    await found.refresh()
    assert "acme" == await found.authenticate(new)
    clock.advance(11)
    with pytest.raises(Unauthenticated):
        await found.authenticate(new)


async def test_miss_reads_the_store_at_most_once_a_second() -> None:
    clock = FakeClock(wall=1_000_000.0)
    rows = Rows()
    found = TenantDirectory([TenantConfig(id="acme")], keys=rows, clock=clock)
    await found.refresh()
    reads = rows.reads
    for i in range(20):
        with pytest.raises(Unauthenticated):
            await found.authenticate(f"igw_{'0' * 12}_{'x' * 40}{i}")
    assert rows.reads <= reads + 1


async def test_key_rows_for_unknown_tenants_are_ignored() -> None:
    clock = FakeClock(wall=1_000_000.0)
    rows = Rows()
    key, record = new_managed_key("ghost", now=clock.wall(), actor="ops")
    rows.put(record)
    found = TenantDirectory([TenantConfig(id="acme")], keys=rows, clock=clock)
    await found.refresh()
    with pytest.raises(Unauthenticated):
        await found.authenticate(key)


async def test_rows_hold_no_plaintext() -> None:
    rows = Rows()
    key, record = new_managed_key("acme", now=1.0, actor="ops")
    rows.put(record)
    [(row_key, token)] = rows.rows.items()
    assert row_key.startswith(KEY_ROW_PREFIX + "acme:")
    assert key not in token.value
    assert key.split("_", 2)[2] not in token.value
    [read] = await managed_keys(rows)
    assert read == record


def vars_of(record: ManagedKey) -> dict[str, object]:
    return {name: getattr(record, name) for name in record.__slots__}


async def test_a_reload_takes_keys_away_and_gives_new_ones_at_once() -> None:
    """After `reconfigure`, the old key (remembered as verified a moment ago) is refused and
    the new tenant's key works."""
    tenants = directory()
    assert "acme" == await tenants.authenticate("acme-key")
    new_digest = hashlib.sha256(b"beta-key").hexdigest()
    tenants.reconfigure([TenantConfig(id="beta", api_key_sha256=new_digest)])
    with pytest.raises(Unauthenticated):
        await tenants.authenticate("acme-key")
    assert "beta" == await tenants.authenticate("beta-key")
