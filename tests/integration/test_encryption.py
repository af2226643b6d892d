"""Encryption at rest end to end (docs/encryption.md): real gateway, simulator and CLI
processes, on a SQLite file and on a scratch PostgreSQL database.

Submissions queued during an outage and then delivered leave no buyer tax number or phone in
the database's bytes (the SQLite file and its WAL; `COPY submission TO STDOUT`), while the
status API still shows the platform's answer. A key rotation with gateways running, then the
old key dropped; and the starts that must fail, with their message.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gateway.outbox.store import open_store
from gateway.outbox.store.sealing import KEY_ENV, PREVIOUS_KEYS_ENV, key_id, new_key
from gateway.outbox.submissions import SubmissionQuery
from tests.integration.test_core_gateway import ISSUE, invoice
from tests.integration.test_outbox import OVERRIDES, serial_of, wait_delivered
from tests.integration.test_store_copy import run_cli
from tests.support.harness import Gateway, Simulator
from tests.support.postgres import scratch_database_sync, server_url
from tests.support.submissions import NOW, admit, new_submission

SUBMISSIONS = 6


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Simulator]:
    with Simulator.start(tmp_path / "sim") as simulator:
        yield simulator


def kid(key: str) -> str:
    return key_id(base64.b64decode(key))


def start(tmp_path: Path, sim: Simulator, store_url: str, env: dict[str, str]) -> Gateway:
    return Gateway.start(
        tmp_path / "gw", sim.url, overrides={**OVERRIDES, "store_url": store_url}, env=env
    )


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The command line with `env` (and no other `GATEWAY_*` variable)."""
    return run_cli(*args, env=env)


def stored_bytes(store_url: str) -> bytes:
    """What an attacker with the disk (SQLite: the file and its WAL) or a dump (PostgreSQL:
    `COPY submission TO STDOUT`) of the store would read."""
    if store_url.startswith("sqlite:///"):
        path = Path(store_url.removeprefix("sqlite:///"))
        files = [path, path.with_name(path.name + "-wal")]
        return b"".join(f.read_bytes() for f in files if f.exists())

    async def dump() -> bytes:
        out = io.BytesIO()
        connection = await asyncpg.connect(store_url)
        try:
            await connection.copy_from_table("submission", output=out)
        finally:
            await connection.close()
        return out.getvalue()

    return asyncio.run(dump())


def phone() -> str:
    return f"139{random.randrange(10**8):08d}"


def test_an_encrypted_outbox_hides_the_buyer_and_rotates_its_key(
    tmp_path: Path, sim: Simulator, store_url: str
) -> None:
    old, new = new_key(), new_key()
    gw = start(tmp_path, sim, store_url, {KEY_ENV: old})
    try:
        sim.fault(kind="http_error", status=503, operations=[ISSUE])
        bodies = [invoice() for _ in range(SUBMISSIONS)]
        ids = []
        for body in bodies:
            body["order"]["buyerPhone"] = phone()
            status, _, answer = gw.call(ISSUE, body)
            assert 202 == status, answer
            ids.append(answer["submission_id"])
        sim.clear_faults()
        serials = {i: serial_of(view) for i, view in wait_delivered(gw, ids).items()}
    finally:
        gw.process.stop()
    secrets = [body["order"][field] for body in bodies for field in ("buyerTaxNum", "buyerPhone")]
    raw = stored_bytes(store_url)
    assert raw, "the store holds something"
    for secret in secrets:
        assert secret.encode() not in raw, f"{secret} is readable in the store"

    # A new current key, the old one kept for reading: old rows read as before, and the
    # rotation runs while the gateway does.
    gw = start(tmp_path, sim, store_url, {KEY_ENV: new, PREVIOUS_KEYS_ENV: old})
    try:
        assert serials == {i: serial_of(gw.status(i)) for i in ids}
        rotated = run(
            "store",
            "rotate-key",
            "--store-url",
            store_url,
            "--batch",
            "4",
            "--json",
            env={KEY_ENV: new, PREVIOUS_KEYS_ENV: old},
        )
        assert 0 == rotated.returncode, rotated.stderr
        summary = json.loads(rotated.stdout)
        assert kid(old) in summary["before"]
        assert set(summary["after"]) == {kid(new)}
        assert summary["left"] == {}
        assert "rows checked" in rotated.stderr
    finally:
        gw.process.stop()

    # The old key can go.
    gw = start(tmp_path, sim, store_url, {KEY_ENV: new})
    try:
        assert serials == {i: serial_of(gw.status(i)) for i in ids}
        config = gw.config_path
    finally:
        gw.process.stop()
    for secret in secrets:
        assert secret.encode() not in stored_bytes(store_url)

    # Starts that must fail, saying why: no key, only the old key, a malformed key.
    unset = run("run", "--config", str(config), env={})
    assert 1 == unset.returncode
    assert kid(new) in unset.stderr
    assert KEY_ENV in unset.stderr
    assert "Traceback" not in unset.stderr
    only_old = run("run", "--config", str(config), env={KEY_ENV: old})
    assert 1 == only_old.returncode
    assert f"encrypted under key id(s) {kid(new)}" in only_old.stderr
    malformed = run("run", "--config", str(config), env={KEY_ENV: "c2hvcnQ="})
    assert 1 == malformed.returncode
    assert f"{KEY_ENV}: 5 bytes, expected 32" in malformed.stderr
    assert "Traceback" not in malformed.stderr


def test_a_configured_key_that_cannot_be_read_stops_the_start(
    tmp_path: Path, sim: Simulator
) -> None:
    """`store.encryption.key_file` naming no file: a configuration error naming the key."""
    gw = start(tmp_path, sim, f"sqlite:///{tmp_path / 'gw.db'}", {})
    gw.process.stop()
    text = gw.config_path.read_text()
    missing = tmp_path / "no-such-key"
    broken = tmp_path / "broken.yaml"
    broken.write_text(_with_key_file(text, missing))
    result = run("run", "--config", str(broken), env={})
    assert 2 == result.returncode, result.stderr
    assert "store.encryption.key" in result.stderr
    assert str(missing) in result.stderr


def _with_key_file(config_text: str, path: Path) -> str:
    import yaml

    config: dict[str, Any] = yaml.safe_load(config_text)
    config.setdefault("store", {})["encryption"] = {"key_file": str(path)}
    return yaml.safe_dump(config, allow_unicode=True)


def test_store_copy_moves_encrypted_rows_under_the_current_key(tmp_path: Path) -> None:
    """`store copy` of an encrypted SQLite store into PostgreSQL, given the source's old key
    as previous and a new current key: the target holds the rows, readable, under the new key
    only, with no buyer data in its bytes."""
    old, new = new_key(), new_key()
    source = f"sqlite:///{tmp_path / 'source.db'}"
    bodies = [secret_invoice() for _ in range(3)]
    asyncio.run(_fill(source, bodies, {KEY_ENV: old}))
    server_url()
    with scratch_database_sync("encrypted_copy") as target:
        copied = run(
            "store",
            "copy",
            "--from",
            source,
            "--to",
            target,
            "--json",
            env={KEY_ENV: new, PREVIOUS_KEYS_ENV: old},
        )
        assert 0 == copied.returncode, copied.stderr
        raw = stored_bytes(target)
        for body in bodies:
            for field in ("buyerTaxNum", "buyerPhone"):
                assert body["order"][field].encode() not in raw
        usage, read = asyncio.run(_read(target, {KEY_ENV: new}))
        assert set(usage) == {kid(new)}
        assert [json.loads(b) for b in read] == bodies


def secret_invoice() -> dict[str, Any]:
    body = invoice()
    body["order"]["buyerPhone"] = phone()
    return body


async def _fill(url: str, bodies: list[dict[str, Any]], environ: dict[str, str]) -> None:
    store = await open_store(url, environ=environ)
    try:
        for n, body in enumerate(bodies):
            raw = json.dumps(body, ensure_ascii=False).encode()
            await admit(store, new_submission(f"K-{n}", body=raw), queue=True, now=NOW + n)
    finally:
        await store.close()


async def _read(url: str, environ: dict[str, str]) -> tuple[dict[str, int], list[bytes]]:
    store = await open_store(url, environ=environ)
    try:
        rows = [row.body async for row in store.stream(SubmissionQuery())]
        return await store.key_usage(), rows
    finally:
        await store.close()
