"""The real `invoice-gateway outbox …` and `invoice-gateway circuit …` commands, run as
subprocesses against a running gateway (admin API) and simulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.test_core_gateway import ISSUE, invoice
from tests.integration.test_outbox import FAST_OUTBOX, FAST_RESILIENCE, wait_delivered
from tests.support.harness import Gateway, Simulator
from tests.support.processes import ROOT, base_env, free_port, wait_until

OPERATOR_TOKEN = "test-operator-token-0123456789"
VIEWER_TOKEN = "test-viewer-token-0123456789"
#: The module that serves `outbox` and `circuit`: the real CLI (`gateway`), or the on-call
#: package on its own (`gateway.cli.oncall`) where it is not mounted in gateway/cli/main.py.
CLI_MODULE = os.environ.get("ONCALL_CLI_MODULE", "gateway")
#: Two attempts and the submission is dead: tests make dead rows in seconds.
MAX_ATTEMPTS = 2


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Simulator]:
    with Simulator.start(tmp_path / "sim") as sim:
        yield sim


def start_gateway(workdir: Path, upstream: str, name: str = "gateway") -> Gateway:
    """A gateway with an operator token (`GATEWAY_ADMIN_TOKEN`) and a viewer token."""
    return Gateway.start(
        workdir,
        upstream,
        name=name,
        overrides={
            "outbox": {**FAST_OUTBOX, "max_attempts": MAX_ATTEMPTS},
            "resilience": FAST_RESILIENCE,
            "upstream.timeout": "2s",
            "admin.tokens": [
                {"name": "viewer-vera", "role": "viewer", "token": {"env": "TEST_VIEWER_TOKEN"}}
            ],
        },
        env={"GATEWAY_ADMIN_TOKEN": OPERATOR_TOKEN, "TEST_VIEWER_TOKEN": VIEWER_TOKEN},
    )


@pytest.fixture
def gw(tmp_path: Path, sim: Simulator) -> Iterator[Gateway]:
    gateway = start_gateway(tmp_path / "gw", sim.url)
    try:
        yield gateway
    finally:
        gateway.process.stop()


def admin_url(gateway: Gateway) -> str:
    config = yaml.safe_load(gateway.config_path.read_text())
    return f"http://{config['admin']['listen']}"


def cli(
    gateway: Gateway | None, *args: str, token: str | None = OPERATOR_TOKEN, url: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `invoice-gateway ARGS…` with the admin URL and token in the environment."""
    env = base_env()
    if token is not None:
        env["GATEWAY_ADMIN_TOKEN"] = token
    if url is None and gateway is not None:
        url = admin_url(gateway)
    if url is not None:
        env["GATEWAY_ADMIN_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", CLI_MODULE, *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def cli_json(gateway: Gateway, *args: str) -> Any:
    """Run a command with `--json`; it must succeed; its one JSON value."""
    result = cli(gateway, *args, "--json")
    assert 0 == result.returncode, result.stderr
    return json.loads(result.stdout)


def cli_json_lines(gateway: Gateway, *args: str) -> list[dict[str, Any]]:
    result = cli(gateway, *args, "--json")
    assert 0 == result.returncode, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def submit(gateway: Gateway, body: dict[str, Any] | None = None) -> tuple[int, str]:
    """Send one invoice through the gateway; (HTTP status, submission id)."""
    body = body or invoice()
    status, _, answer = gateway.call(ISSUE, body)
    assert status in (200, 202), answer
    if status == 202:
        return status, str(answer["submission_id"])
    [submission_id] = submission_ids(gateway, "--search", body["order"]["orderNo"])
    return status, submission_id


def submission_ids(gateway: Gateway, *filters: str) -> list[str]:
    """The ids `outbox list FILTERS…` finds, newest first."""
    return [row["submission_id"] for row in cli_json_lines(gateway, "outbox", "list", *filters)]


def make_dead(gateway: Gateway, sim: Simulator, count: int) -> list[tuple[str, str]]:
    """`count` submissions that exhaust their attempts while the platform is down:
    (submission id, order number) each. The platform is healthy again afterwards."""
    sim.fault(kind="http_error", status=503, operations=[ISSUE])
    made = []
    for _ in range(count):
        body = invoice()
        status, _, answer = gateway.call(ISSUE, body)
        assert 202 == status, answer
        made.append((str(answer["submission_id"]), str(body["order"]["orderNo"])))
    ids = [submission_id for submission_id, _ in made]
    wait_until(
        lambda: {gateway.status(i)["status"] for i in ids} == {"dead"},
        timeout=30,
        interval=0.2,
        what=f"{count} dead submissions",
    )
    sim.clear_faults()
    return made


def issued(sim: Simulator, order_no: str) -> int:
    order = sim.ledger()["orders"].get(order_no)
    return int(order["issued"]) if order else 0


# -- reading ---------------------------------------------------------------------------------------


def test_list_and_show_as_json(gw: Gateway) -> None:
    """`outbox list --json` finds a submission by its order number; `show` has its payload."""
    body = invoice()
    order_no = body["order"]["orderNo"]
    status, _, answer = gw.call(ISSUE, body)
    assert 200 == status, answer
    [row] = cli_json_lines(gw, "outbox", "list", "--search", order_no)
    assert order_no == row["business_key"]
    assert "delivered" == row["status"]
    assert "demo" == row["tenant"]
    shown = cli_json(gw, "outbox", "show", row["submission_id"])
    assert body == shown["payload"]
    assert row["submission_id"] == shown["submission_id"]


def test_list_table_for_people(gw: Gateway) -> None:
    """Without --json, `outbox list` prints a table with the columns on-call reads."""
    body = invoice()
    gw.call(ISSUE, body)
    result = cli(gw, "outbox", "list", "--state", "delivered")
    assert 0 == result.returncode, result.stderr
    header = result.stdout.splitlines()[0]
    for column in ("id", "state", "tenant", "operation", "business key", "attempts", "accepted"):
        assert column in header
    assert body["order"]["orderNo"] in result.stdout


# -- replay ----------------------------------------------------------------------------------------


def test_dead_submission_found_replayed_and_delivered_once(gw: Gateway, sim: Simulator) -> None:
    """A dead submission is found by filter, replayed by id, and issued exactly once."""
    [(submission_id, order_no)] = make_dead(gw, sim, 1)
    assert [submission_id] == submission_ids(gw, "--state", "dead")
    replayed = cli_json(gw, "outbox", "replay", "--id", submission_id, "--reason", "platform back")
    assert replayed["status"] in ("queued", "unknown", "delivering", "delivered")
    wait_delivered(gw, [submission_id])
    assert 1 == issued(sim, order_no)
    [entry] = [e for e in cli_json_lines(gw, "outbox", "audit") if e["action"] == "replay"]
    assert "env" == entry["actor"]
    assert "platform back" == entry["reason"]


def test_dry_run_counts_what_the_bulk_replay_then_touches(gw: Gateway, sim: Simulator) -> None:
    """`replay --dry-run` counts the dead rows; the bulk replay replays exactly those."""
    made = make_dead(gw, sim, 3)
    dry = cli_json(gw, "outbox", "replay", "--state", "dead", "--dry-run")
    assert 3 == dry["count"]
    job = cli_json(gw, "outbox", "replay", "--state", "dead", "--reason", "outage over")
    assert "done" == job["state"]
    assert 3 == job["done"] + job["skipped"] == job["total"]
    assert 3 == job["done"]
    wait_delivered(gw, [submission_id for submission_id, _ in made])
    assert [1, 1, 1] == [issued(sim, order_no) for _, order_no in made]


def test_bulk_replay_needs_a_filter_and_a_reason(gw: Gateway) -> None:
    """A bulk replay without filters, or without --reason, is a usage error (exit 2)."""
    assert 2 == cli(gw, "outbox", "replay", "--reason", "x").returncode
    result = cli(gw, "outbox", "replay", "--state", "dead")
    assert 2 == result.returncode
    assert "--reason" in result.stderr


# -- discard, force-resend, edit ---------------------------------------------------------------


def test_discard_needs_a_reason_and_never_sends(gw: Gateway, sim: Simulator) -> None:
    """`discard` without --reason exits 2; with one, the row is discarded and never issued."""
    [(submission_id, order_no)] = make_dead(gw, sim, 1)
    result = cli(gw, "outbox", "discard", submission_id)
    assert 2 == result.returncode
    assert "--reason" in result.stderr
    discarded = cli_json(gw, "outbox", "discard", submission_id, "--reason", "customer cancelled")
    assert "discarded" == discarded["status"]
    # Replaying it now is refused by the gateway: exit 1, with its reason.
    again = cli(gw, "outbox", "replay", "--id", submission_id, "--reason", "oops")
    assert 1 == again.returncode
    assert "discarded" in again.stderr
    assert 0 == issued(sim, order_no)


def test_force_resend_refuses_without_yes(gw: Gateway, sim: Simulator) -> None:
    """`force-resend` without --yes exits 2 and explains it may create a second invoice."""
    body = invoice()
    _, submission_id = submit(gw, body)
    result = cli(gw, "outbox", "force-resend", submission_id, "--reason", "platform lost it")
    assert 2 == result.returncode
    assert "second invoice" in result.stderr.lower()
    assert "delivered" == gw.status(submission_id)["status"]
    assert 1 == issued(sim, body["order"]["orderNo"])


def test_edit_before_replay_is_sent_and_audited(gw: Gateway, sim: Simulator) -> None:
    """A queued submission's field is edited; the edited payload is what the platform issues."""
    assert 0 == cli(gw, "outbox", "pause", "--reason", "hold for an edit").returncode
    assert 0 == cli(gw, "circuit", "open", "--reason", "queue everything").returncode
    body = invoice()
    status, submission_id = submit(gw, body)
    assert 202 == status
    fixed = "91110108MA01TESTX1"
    edited = cli_json(
        gw,
        "outbox",
        "edit",
        submission_id,
        "--set",
        f'/order/buyerName="{fixed}"',
        "--reason",
        "buyer name typo",
    )
    assert "queued" == edited["status"]
    assert 0 == cli(gw, "circuit", "reset").returncode
    assert 0 == cli(gw, "outbox", "resume").returncode
    wait_delivered(gw, [submission_id])
    [entry] = [e for e in sim.ledger()["invoices"] if e["orderNo"] == body["order"]["orderNo"]]
    assert fixed == entry["buyerName"]
    [audit] = [e for e in cli_json_lines(gw, "outbox", "audit") if e["action"] == "edit"]
    assert {
        "pointer": "/order/buyerName",
        "before": body["order"]["buyerName"],
        "after": fixed,
    }.items() <= audit["details"].items()


# -- export and import -----------------------------------------------------------------------------


def test_export_import_round_trips(tmp_path: Path, gw: Gateway, sim: Simulator) -> None:
    """An export imported into a fresh gateway exports again to the same records."""
    for _ in range(3):
        submit(gw)
    [(dead_id, _)] = make_dead(gw, sim, 1)
    cli_json(gw, "outbox", "discard", dead_id, "--reason", "keep it out of the backup test")
    backup = tmp_path / "backup.jsonl"
    unmasked = ("--unmasked", "--reason", "backup test")
    exported = cli_json(gw, "outbox", "export", *unmasked, "-o", str(backup))
    assert {"exported": 4, "file": str(backup)} == exported
    fresh = start_gateway(tmp_path / "fresh", sim.url, name="fresh")
    try:
        assert {"imported": 4} == cli_json(fresh, "outbox", "import", str(backup))
        again = cli(fresh, "outbox", "export", *unmasked)
        assert 0 == again.returncode, again.stderr
        before = sorted(backup.read_text().splitlines())
        after = sorted(again.stdout.splitlines())
        assert [json.loads(line) for line in before] == [json.loads(line) for line in after]
        # A second import is refused: the store is no longer empty.
        assert 1 == cli(fresh, "outbox", "import", str(backup)).returncode
    finally:
        fresh.process.stop()


# -- dispatcher and circuit ------------------------------------------------------------------------


def test_pause_and_resume(gw: Gateway) -> None:
    """`pause` holds the dispatcher, `resume` lets it go; both are in the audit log."""
    assert cli_json(gw, "outbox", "pause", "--reason", "platform maintenance")["paused"] is True
    assert cli_json(gw, "outbox", "dispatcher")["paused"] is True
    assert cli_json(gw, "outbox", "resume")["paused"] is False
    actions = [entry["action"] for entry in cli_json_lines(gw, "outbox", "audit")]
    assert ["dispatcher-resume", "dispatcher-pause"] == actions[:2]


def test_circuit_open_close_status(gw: Gateway) -> None:
    """`circuit open` forces the breakers open (submissions queue), `close` and `reset` undo it."""
    submit(gw)  # a breaker exists once the upstream has been called
    opened = cli_json(gw, "circuit", "open", "--reason", "platform announced maintenance")
    assert {"forced_open"} == {b["state"] for b in opened["breakers"]}
    status, _ = submit(gw)
    assert 202 == status
    table = cli(gw, "circuit", "status")
    assert 0 == table.returncode, table.stderr
    assert "forced_open" in table.stdout
    assert "platform announced maintenance" in table.stdout
    closed = cli_json(gw, "circuit", "close")
    assert {"forced_closed"} == {b["state"] for b in closed["breakers"]}
    reset = cli_json(gw, "circuit", "reset")
    assert {"closed"} == {b["state"] for b in reset["breakers"]}


# -- what scripts can rely on ----------------------------------------------------------------------


def test_wrong_token_exits_4_and_says_what_to_set(gw: Gateway) -> None:
    """A token the gateway does not know: exit 4, naming GATEWAY_ADMIN_TOKEN."""
    result = cli(gw, "outbox", "list", token="not-a-token")
    assert 4 == result.returncode
    assert "401" in result.stderr
    assert "GATEWAY_ADMIN_TOKEN" in result.stderr
    assert "" == result.stdout


def test_no_token_exits_4(gw: Gateway) -> None:
    """No token at all: exit 4 before anything is sent."""
    result = cli(gw, "circuit", "status", token=None)
    assert 4 == result.returncode
    assert "GATEWAY_ADMIN_TOKEN" in result.stderr


def test_viewer_may_look_but_not_replay(gw: Gateway, sim: Simulator) -> None:
    """A viewer token lists (exit 0) but replaying is refused with exit 4 (needs operator)."""
    [(submission_id, _)] = make_dead(gw, sim, 1)
    listed = cli(gw, "outbox", "list", "--json", token=VIEWER_TOKEN)
    assert 0 == listed.returncode, listed.stderr
    result = cli(gw, "outbox", "replay", "--id", submission_id, "--reason", "x", token=VIEWER_TOKEN)
    assert 4 == result.returncode
    assert "403" in result.stderr
    assert "operator" in result.stderr
    assert "dead" == gw.status(submission_id)["status"]


def test_gateway_not_running_exits_3() -> None:
    """Nothing listens at --url: exit 3 with the message that says what to check."""
    url = f"http://127.0.0.1:{free_port()}"
    result = cli(None, "outbox", "list", "--url", url)
    assert 3 == result.returncode
    assert f"cannot reach the gateway admin API at {url}" in result.stderr
    assert "is it running? is --url right?" in result.stderr


def test_refused_action_exits_1(gw: Gateway) -> None:
    """The gateway refuses (404 no such submission): exit 1 with its explanation."""
    result = cli(gw, "outbox", "show", "sub_does_not_exist")
    assert 1 == result.returncode
    assert "404" in result.stderr
    assert "sub_does_not_exist" in result.stderr
