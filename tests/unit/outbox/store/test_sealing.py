"""The sealed-value formats of `gateway.outbox.store.sealing` (docs/encryption.md)."""

from __future__ import annotations

import base64

import pytest

from gateway.errors import ConfigError
from gateway.outbox.store.sealing import (
    ESCAPE,
    KEY_ENV,
    MAGIC,
    PREVIOUS_KEYS_ENV,
    TEXT_PREFIX,
    Sealer,
    SealingError,
    key_id,
    new_key,
)

KEY, OTHER = base64.b64decode(new_key()), base64.b64decode(new_key())
BODY = b'{"buyerTaxNum": "91330106MA2GLZ7Q8X"}'


def test_a_sealed_body_names_its_key_and_differs_every_time() -> None:
    sealer = Sealer(KEY)
    first, second = sealer.seal(BODY, "s1/body"), sealer.seal(BODY, "s1/body")
    assert first.startswith(MAGIC + bytes.fromhex(key_id(KEY)))
    assert first != second, "a fresh nonce each time"
    assert len(first) == len(MAGIC) + 8 + 12 + len(BODY) + 16
    assert b"91330106MA2GLZ7Q8X" not in first
    assert sealer.open(first, "s1/body") == BODY
    assert Sealer.stored_key_id(first) == key_id(KEY)


def test_a_value_opens_only_where_it_was_sealed() -> None:
    sealed = Sealer(KEY).seal(BODY, "s1/body")
    with pytest.raises(SealingError, match="altered or moved"):
        Sealer(KEY).open(sealed, "s2/body")
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(SealingError, match="altered or moved"):
        Sealer(KEY).open(tampered, "s1/body")


def test_previous_keys_open_but_never_seal() -> None:
    old = Sealer(OTHER).seal(BODY, "s1/body")
    rotated = Sealer(KEY, [OTHER])
    assert rotated.open(old, "s1/body") == BODY
    assert not rotated.is_current(old)
    assert rotated.is_current(rotated.seal(BODY, "s1/body"))
    with pytest.raises(SealingError, match=f"key {key_id(OTHER)}, which is not configured"):
        Sealer(KEY).open(old, "s1/body")
    with pytest.raises(SealingError, match="not configured"):
        Sealer().open(old, "s1/body")


def test_text_values_are_sealed_as_text() -> None:
    sealer = Sealer(KEY)
    sealed = sealer.seal_text('{"phone": "13912345678"}', "s1/result")
    assert sealed.startswith(f"{TEXT_PREFIX}{key_id(KEY)}:")
    assert "13912345678" not in sealed
    assert sealer.open_text(sealed, "s1/result") == '{"phone": "13912345678"}'
    assert Sealer.stored_key_id(sealed) == key_id(KEY)
    assert sealer.open_text('{"plain": 1}') == '{"plain": 1}'


def test_without_a_key_values_are_stored_as_given() -> None:
    sealer = Sealer()
    assert not sealer.enabled
    assert sealer.seal(BODY) == BODY
    assert sealer.seal_text("{}") == "{}"
    # Plaintext that looks like a sealed value is escaped, and reads back as it was.
    lookalike = MAGIC + b"not sealed"
    stored = sealer.seal(lookalike)
    assert stored == ESCAPE + lookalike
    assert sealer.open(stored) == lookalike
    with pytest.raises(SealingError, match="unknown format"):
        sealer.open(b"\x00gw9whatever")


def test_keys_come_from_the_settings_else_the_environment() -> None:
    current, previous = new_key(), new_key()
    from_env = Sealer.from_settings(None, [], {KEY_ENV: current, PREVIOUS_KEYS_ENV: previous})
    assert from_env.current_id == key_id(base64.b64decode(current))
    assert from_env.key_ids == {key_id(base64.b64decode(k)) for k in (current, previous)}
    configured = Sealer.from_settings(previous, [], {KEY_ENV: current})
    assert configured.current_id == key_id(base64.b64decode(previous))
    assert not Sealer.from_settings(None, [], {}).enabled
    with pytest.raises(ConfigError, match=r"store\.encryption\.key: not base64"):
        Sealer.from_settings("***", [], {})
    with pytest.raises(ConfigError, match=f"{KEY_ENV}: 16 bytes, expected 32"):
        Sealer.from_settings(None, [], {KEY_ENV: base64.b64encode(b"x" * 16).decode()})
