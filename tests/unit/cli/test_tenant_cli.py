"""`invoice-gateway tenant …` in process, on a SQLite store in a temporary directory."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli.main import main
from gateway.edge.tenants import managed_keys
from gateway.keyhash import parse_key_hash
from gateway.outbox.store import open_store


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.yaml"
    document = {
        "store_url": f"sqlite:///{tmp_path / 'gateway.db'}",
        "tenants": [{"id": "acme"}, {"id": "demo", "api_key_sha256": "0" * 64}],
        "upstream": {"url": "http://127.0.0.1:9", "auth": {"scheme": "none"}},
    }
    path.write_text(yaml.safe_dump(document))
    return path


def run(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> tuple[int, Any]:
    code = main(["tenant", *args, "--config", str(config), "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if code == 0 else None


def stored(config: Path) -> list[Any]:
    async def read() -> list[Any]:
        store = await open_store(f"sqlite:///{config.parent / 'gateway.db'}")
        try:
            keys = await managed_keys(store)
            audit, _ = await store.audit_log(limit=50, cursor=None)
            return [keys, audit]
        finally:
            await store.close()

    return asyncio.run(read())


def test_add_rotate_with_overlap_revoke(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, added = run(capsys, config, "add", "acme")
    assert 0 == code
    assert added["api_key"].startswith(f"igw_{added['key_id']}_")
    code, _ = run(capsys, config, "add", "acme")
    assert 2 == code, "a second add is refused: rotate instead"

    code, rotated = run(capsys, config, "rotate-key", "acme", "--overlap", "1h")
    assert 0 == code
    assert [added["key_id"]] == rotated["previous_key_ids"]
    keys, _ = stored(config)
    old = next(k for k in keys if k.key_id == added["key_id"])
    assert old.expires_at == pytest.approx(rotated["previous_expire_at"])
    assert old.active(old.created_at + 60)
    assert not old.active(old.created_at + 3700)

    code, revoked = run(capsys, config, "revoke", "acme", "--key-id", added["key_id"])
    assert 0 == code
    assert [added["key_id"]] == revoked["revoked_key_ids"]
    code, listing = run(capsys, config, "list")
    states = {k["key_id"]: k["state"] for k in listing["keys"]}
    assert {added["key_id"]: "revoked", rotated["key_id"]: "active"} == states

    keys, audit = stored(config)
    assert next(k for k in keys if k.key_id == added["key_id"]).hash is None
    new = next(k for k in keys if k.key_id == rotated["key_id"])
    assert new.hash is not None
    assert parse_key_hash(new.hash).verify(rotated["api_key"])
    actions = [(e.action, e.details["tenant"]) for e in audit]
    assert [
        ("tenant.key.revoke", "acme"),
        ("tenant.key.rotate", "acme"),
        ("tenant.key.add", "acme"),
    ] == actions
    assert all(e.actor for e in audit)
    assert rotated["api_key"] not in json.dumps([e.to_json() for e in audit])


def test_unknown_tenant_and_unknown_key(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert 2 == main(["tenant", "add", "ghost", "--config", str(config)])
    assert "not in the configuration" in capsys.readouterr().err
    assert 2 == main(["tenant", "revoke", "acme", "--config", str(config)])
    assert "no unrevoked managed keys" in capsys.readouterr().err


def test_hash_key_reads_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret\n"))
    assert 0 == main(["tenant", "hash-key", "--scheme", "pbkdf2-sha256"])
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("pbkdf2-sha256$i=600000$")
    assert parse_key_hash(printed).verify("s3cret")
