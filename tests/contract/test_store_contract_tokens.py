"""The upstream token: saved durably under a key, replaced, read back after a restart."""

from __future__ import annotations

from gateway.outbox.store import Store, StoredToken
from tests.contract.factories import Database
from tests.support.submissions import NOW

KEY = "nuonuo-hmac:the-app-key"


async def test_a_saved_token_loads_back(store: Store) -> None:
    """What was saved under a key is what loads from it."""
    token = StoredToken("tok-1", NOW, 86400.0)
    await store.save_token(KEY, token)
    assert token == await store.load_token(KEY)


async def test_saving_again_replaces_the_token(store: Store) -> None:
    """A second save under the same key replaces the first."""
    await store.save_token(KEY, StoredToken("tok-1", NOW, 86400.0))
    renewed = StoredToken("tok-2", NOW + 3600, 7200.0)
    await store.save_token(KEY, renewed)
    assert renewed == await store.load_token(KEY)


async def test_an_unknown_key_has_no_token(store: Store) -> None:
    """Loading a key nothing was saved under gives None."""
    await store.save_token(KEY, StoredToken("tok-1", NOW, 86400.0))
    assert await store.load_token("nuonuo-hmac:another-app") is None


async def test_tokens_of_different_keys_are_kept_apart(store: Store) -> None:
    """Each key has its own token."""
    first, second = StoredToken("tok-a", NOW, 60.0), StoredToken("tok-b", NOW + 1, 120.0)
    await store.save_token("scheme:a", first)
    await store.save_token("scheme:b", second)
    assert (first, second) == (
        await store.load_token("scheme:a"),
        await store.load_token("scheme:b"),
    )


async def test_a_saved_token_survives_a_restart(database: Database, store: Store) -> None:
    """The token outlives the process (a restart does not spend the platform's token quota)."""
    token = StoredToken("tok-1", NOW, 86400.0)
    await store.save_token(KEY, token)
    again = await database.reopen(store)
    assert token == await again.load_token(KEY)


async def test_another_gateway_on_the_database_sees_a_saved_token(
    store: Store, peer: Store
) -> None:
    """A token saved by one gateway is what another one sharing the database loads."""
    token = StoredToken("tok-1", NOW, 86400.0)
    await store.save_token(KEY, token)
    assert token == await peer.load_token(KEY)
