"""The on-call CLI against a small fake admin API (aiohttp, in a thread): arguments, requests
sent, output, and the exit codes scripts rely on."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from rich.console import Console

import gateway.cli.oncall
from gateway.cli.oncall import (
    commands,
    configure_circuit,
    configure_outbox,
    configure_token,
    render,
)
from tests.support.processes import ROOT, base_env, free_port, wait_until

OPERATOR = "op-token"
VIEWER = "viewer-token"
PROBLEM = "application/problem+json"


def summary(number: int, state: str = "dead") -> dict[str, Any]:
    return {
        "submission_id": f"sub_{number:04d}",
        "status": state,
        "tenant": "demo",
        "operation": "nuonuo.OpeMplatform.requestBillingNew",
        "business_key": f"SO-{number:04d}",
        "attempts": 3,
        "last_error_class": "upstream_unavailable",
        "last_error": "503 from the platform",
        "accepted_at": "2026-11-27T10:00:00.000Z",
    }


@dataclass
class FakeAdmin:
    """Just enough of docs/admin-api.md to drive every command; records what it was asked."""

    rows: list[dict[str, Any]] = field(default_factory=lambda: [summary(n) for n in range(7)])
    requests: list[tuple[str, str, dict[str, str], Any]] = field(default_factory=list)
    #: "runs" (one more row done per poll), or "stuck" (never finishes on its own).
    job_mode: str = "runs"
    job: dict[str, Any] = field(default_factory=dict)
    #: Export: stop sending after this many lines and drop the connection.
    export_cut_after: int | None = None
    imported: bytes = b""
    #: `token refresh` is answered 503 with this detail (None: a token).
    token_refusal: str | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def asked(self, method: str, path: str) -> list[tuple[dict[str, str], Any]]:
        return [(q, b) for m, p, q, b in self.requests if (m, p) == (method, path)]

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        v1 = "/admin/v1"
        app.router.add_get(v1 + "/submissions", self._list)
        app.router.add_get(v1 + "/submissions/count", self._count)
        app.router.add_get(v1 + "/submissions/{id}", self._show)
        app.router.add_post(v1 + "/submissions/{id}/{action}", self._act)
        app.router.add_patch(v1 + "/submissions/{id}/payload", self._edit)
        app.router.add_post(v1 + "/replays", self._replays)
        app.router.add_get(v1 + "/jobs/{id}", self._job)
        app.router.add_post(v1 + "/jobs/{id}/cancel", self._cancel)
        app.router.add_get(v1 + "/dispatcher", self._dispatcher)
        app.router.add_post(v1 + "/dispatcher/{action}", self._dispatcher)
        app.router.add_get(v1 + "/circuit", self._circuit)
        app.router.add_post(v1 + "/circuit/{action}", self._circuit)
        app.router.add_get(v1 + "/token", self._token)
        app.router.add_post(v1 + "/token/refresh", self._token)
        app.router.add_get(v1 + "/export", self._export)
        app.router.add_post(v1 + "/import", self._import)
        app.router.add_get(v1 + "/audit", self._audit)
        app.router.add_get(v1 + "/slow", self._slow)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        raw = await request.read()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        self.requests.append((request.method, request.path, dict(request.query), body))
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in (OPERATOR, VIEWER):
            return problem(401, "Missing or unknown admin token", "no such token")
        if token == VIEWER and request.method != "GET":
            return problem(403, "Forbidden", f"{request.method} {request.path} needs operator")
        response: web.StreamResponse = await handler(request)
        return response

    def _matching(self, request: web.Request) -> list[dict[str, Any]]:
        states = request.query.get("state")
        if not states:
            return self.rows
        return [row for row in self.rows if row["status"] in states.split(",")]

    async def _list(self, request: web.Request) -> web.Response:
        rows = self._matching(request)
        start = int(request.query.get("cursor", "0"))
        limit = int(request.query.get("limit", "50"))
        end = start + limit
        cursor = str(end) if end < len(rows) else None
        return web.json_response({"items": rows[start:end], "next_cursor": cursor})

    async def _count(self, request: web.Request) -> web.Response:
        return web.json_response({"count": len(self._matching(request))})

    async def _show(self, request: web.Request) -> web.Response:
        for row in self.rows:
            if row["submission_id"] == request.match_info["id"]:
                return web.json_response({**row, "payload": {"order": {"orderNo": "SO-1"}}})
        return problem(404, "Not found", f"no submission {request.match_info['id']!r}")

    async def _act(self, request: web.Request) -> web.Response:
        row = next(r for r in self.rows if r["submission_id"] == request.match_info["id"])
        action = request.match_info["action"]
        if row["status"] == "delivered" and action != "force-resend":
            return problem(409, "Not possible in the submission's current state", "delivered")
        state = {"discard": "discarded"}.get(action, "queued")
        return web.json_response({**row, "status": state})

    async def _edit(self, request: web.Request) -> web.Response:
        return web.json_response(self.rows[0])

    async def _replays(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body["dry_run"]:
            return web.json_response({"count": 5, "filter": body["filter"]})
        self.job = {"job_id": "job_1", "kind": "replay", "state": "running", "total": 5}
        self.job.update(done=0, skipped=0)
        return web.json_response({**self.job, "status_url": "/admin/v1/jobs/job_1"}, status=202)

    async def _job(self, request: web.Request) -> web.Response:
        job = self.job
        if self.job_mode == "runs" and job["state"] == "running":
            job["done"] += 1
            if job["done"] == job["total"]:
                job["state"] = "done"
        return web.json_response(job)

    async def _cancel(self, request: web.Request) -> web.Response:
        self.job["state"] = "cancelled"
        return web.json_response(self.job)

    async def _dispatcher(self, request: web.Request) -> web.Response:
        paused = request.match_info.get("action") == "pause"
        return web.json_response({"paused": paused, "running": True, "in_flight": 0, "stats": {}})

    async def _circuit(self, request: web.Request) -> web.Response:
        state = {"open": "forced_open", "close": "forced_closed"}.get(
            request.match_info.get("action", ""), "closed"
        )
        breaker = {"name": "upstream", "state": state, "since": "2026-11-27T10:00:00Z"}
        return web.json_response({"breakers": [breaker], "health": {"status": "up"}})

    async def _token(self, request: web.Request) -> web.Response:
        if request.method == "POST" and self.token_refusal:
            return problem(503, "No new access token", self.token_refusal)
        hold = None
        if request.method == "GET":
            hold = {
                "cause": "quota",
                "since": "2026-11-27T10:00:00.000Z",
                "until": "2026-11-27T16:00:00.000Z",
                "operator_may_end": True,
                "reason": "the platform's token quota is used up (070306)",
            }
        calls = {"last_hour": 1, "last_day": 3, "last_30_days": 31, "per_hour": 5, "per_day": 20}
        return web.json_response(
            {
                "token_url": "https://open.nuonuo.com/accessToken",
                "token": None if hold else {"obtained_at": "2026-11-27T10:05:00.000Z"},
                "calls": calls,
                "results": {"success": 1, "config_error": 0, "quota": 1, "failure": 0},
                "hold": hold,
            }
        )

    async def _export(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for number, row in enumerate(self._matching(request)):
            if self.export_cut_after is not None and number == self.export_cut_after:
                assert request.transport is not None
                request.transport.close()
                return response
            await response.write(json.dumps(row).encode() + b"\n")
        await response.write_eof()
        return response

    async def _import(self, request: web.Request) -> web.Response:
        if self.imported:
            return problem(409, "Conflict", "the store already holds submissions")
        self.imported = await request.read()
        return web.json_response({"imported": len(self.imported.splitlines())})

    async def _audit(self, request: web.Request) -> web.Response:
        entry = {"seq": 1, "at": "2026-11-27T10:00:00.000Z", "actor": "env", "role": "operator"}
        entry.update(action="discard", submission_ids=["sub_0001"], reason="r", details={})
        return web.json_response({"items": [entry], "next_cursor": None})

    async def _slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response({})


def problem(status: int, title: str, detail: str) -> web.Response:
    body = {"type": "urn:invoice-gateway:problem:x", "title": title, "status": status}
    body["detail"] = detail
    return web.Response(status=status, text=json.dumps(body), content_type=PROBLEM)


@pytest.fixture
def fake() -> Iterator[FakeAdmin]:
    """The fake admin API on a free port, served from its own thread and event loop."""
    admin = FakeAdmin()
    ready = threading.Event()
    stop: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    async def serve() -> None:
        runner = web.AppRunner(admin.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        admin.port = runner.addresses[0][1]
        done = asyncio.Event()
        stop.append((asyncio.get_running_loop(), done))
        ready.set()
        await done.wait()
        await runner.cleanup()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield admin
    finally:
        loop, done = stop[0]
        loop.call_soon_threadsafe(done.set)
        thread.join(10)


@pytest.fixture(autouse=True)
def admin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with the operator token set and no admin URL from the environment."""
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", OPERATOR)
    monkeypatch.delenv("GATEWAY_ADMIN_URL", raising=False)


def parser() -> argparse.ArgumentParser:
    """The three groups mounted as gateway/cli/main.py mounts them."""
    root = argparse.ArgumentParser(prog="invoice-gateway")
    groups = root.add_subparsers(dest="command", required=True)
    configure_outbox(groups.add_parser("outbox"))
    configure_circuit(groups.add_parser("circuit"))
    configure_token(groups.add_parser("token"))
    return root


def run(fake: FakeAdmin | None, *argv: str) -> int:
    args = parser().parse_args([argv[0], *(["--url", fake.url] if fake else []), *argv[1:]])
    code: int = args.handler(args)
    return code


def json_lines(text: str) -> list[Any]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# -- arguments ---------------------------------------------------------------------------------


def test_public_surface() -> None:
    """The package exports what gateway/cli/main.py and scripts need, and nothing by accident."""
    assert sorted(gateway.cli.oncall.__all__) == sorted(
        name
        for name in vars(gateway.cli.oncall)
        if not name.startswith("_") and name not in ("client", "commands", "render")
    )


def test_when_accepts_durations_unix_seconds_and_iso() -> None:
    """`--since 2h` is two hours ago; unix seconds and ISO 8601 (naive = UTC) are accepted."""
    now = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)
    assert "2026-11-27T10:00:00.000Z" == commands.parse_when("2h", now=now)
    assert "2026-11-27T11:30:00.000Z" == commands.parse_when("30m", now=now)
    assert "2026-11-24T12:00:00.000Z" == commands.parse_when("3d", now=now)
    assert "2026-11-27T10:00:00.000Z" == commands.parse_when("1795773600")
    assert "2026-11-27T10:00:00.000Z" == commands.parse_when("2026-11-27T10:00:00")
    assert "2026-11-27T10:00:00.000Z" == commands.parse_when("2026-11-27T18:00:00+08:00")
    with pytest.raises(argparse.ArgumentTypeError, match="not a time"):
        commands.parse_when("yesterday")


def test_set_value_is_json_when_it_parses_else_text() -> None:
    """`--set` takes VALUE as JSON when it parses; quoted digits stay a string."""
    assert ("/a/b", 12) == commands.parse_assignment("/a/b=12")
    assert ("/a", "110101199003072316") == commands.parse_assignment('/a="110101199003072316"')
    assert ("/a", "91110108MA01TEST0X") == commands.parse_assignment("/a=91110108MA01TEST0X")
    assert ("/a", {"x": None}) == commands.parse_assignment('/a={"x": null}')
    assert ("/a", "x=y") == commands.parse_assignment("/a=x=y")
    with pytest.raises(argparse.ArgumentTypeError, match="POINTER=VALUE"):
        commands.parse_assignment("order/buyerTaxNum=1")


def test_connection_options_before_or_after_the_command(fake: FakeAdmin, capsys: Any) -> None:
    """`outbox --json list` and `outbox list --json --url …` mean the same."""
    args = parser().parse_args(["outbox", "--json", "--url", fake.url, "list"])
    assert 0 == args.handler(args)
    first = capsys.readouterr().out
    args = parser().parse_args(["outbox", "list", "--json", "--url", fake.url])
    assert 0 == args.handler(args)
    assert first == capsys.readouterr().out
    assert 7 == len(json_lines(first))


def test_help_lists_exit_codes(capsys: Any) -> None:
    """Every command's --help ends with the exit codes."""
    with pytest.raises(SystemExit) as exit_info:
        parser().parse_args(["outbox", "replay", "--help"])
    assert 0 == exit_info.value.code
    out = capsys.readouterr().out
    for line in ("0  success", "3  cannot reach", "4  authentication"):
        assert line in out


def test_discard_needs_a_reason(capsys: Any) -> None:
    """`discard` without --reason, or with a blank one, is a usage error (exit 2)."""
    for argv in (["outbox", "discard", "sub_1"], ["outbox", "discard", "sub_1", "--reason", " "]):
        with pytest.raises(SystemExit) as exit_info:
            parser().parse_args(argv)
        assert 2 == exit_info.value.code
    assert "--reason" in capsys.readouterr().err


# -- reading -------------------------------------------------------------------------------------


def test_narrow_table_keeps_ids_whole() -> None:
    """On a narrow terminal, operation and last error give way; ids and keys stay whole."""
    row = {**summary(1), "submission_id": "sub_01a21e71f538b51c87647cd8cdb330dd"}
    console = Console(file=io.StringIO(), width=120, color_system=None)
    console.print(render.submissions_table([row], width=120))
    lines = console.file.getvalue().splitlines()  # type: ignore[attr-defined]
    assert all(len(line) <= 120 for line in lines)
    assert "sub_01a21e71f538b51c87647cd8cdb330dd" in lines[1]
    assert "SO-0001" in lines[1]
    assert "2026-11-27 10:00:00Z" in lines[1]


def test_list_all_follows_cursors(fake: FakeAdmin, capsys: Any) -> None:
    """`--all` reads every page; `--limit` stops at N rows."""
    fake.rows = [summary(n) for n in range(1200)]
    assert 0 == run(fake, "outbox", "list", "--all", "--json")
    assert 1200 == len(json_lines(capsys.readouterr().out))
    assert ["500", "500", "500"] == [
        q["limit"] for q, _ in fake.asked("GET", "/admin/v1/submissions")
    ]
    assert 0 == run(fake, "outbox", "list", "--limit", "3", "--json")
    assert 3 == len(json_lines(capsys.readouterr().out))


def test_list_sends_the_filters(fake: FakeAdmin) -> None:
    """Filter options become the admin API's query keys."""
    argv = ["--state", "dead", "--state", "queued,unknown", "--tenant", "acme", "--search", "SO-1"]
    argv += ["--error-class", "upstream_timeout", "--since", "2026-11-27T10:00:00Z"]
    assert 0 == run(fake, "outbox", "list", *argv, "--operation", "op", "--json")
    [(query, _)] = fake.asked("GET", "/admin/v1/submissions")
    assert {
        "state": "dead,queued,unknown",
        "tenant": "acme",
        "operation": "op",
        "error_class": "upstream_timeout",
        "accepted_after": "2026-11-27T10:00:00.000Z",
        "q": "SO-1",
        "limit": "50",
    } == query


def test_list_table_says_when_more_match(fake: FakeAdmin, capsys: Any) -> None:
    """The table shows the newest rows and says how many more match."""
    assert 0 == run(fake, "outbox", "list", "--limit", "2")
    captured = capsys.readouterr()
    assert "sub_0000" in captured.out
    assert "sub_0002" not in captured.out
    assert "business key" in captured.out.splitlines()[0]
    assert "showing the newest 2 of 7" in captured.err


def test_show_missing_submission_exits_1(fake: FakeAdmin, capsys: Any) -> None:
    """A problem+json 404 is exit 1 with the gateway's own words."""
    assert 1 == run(fake, "outbox", "show", "sub_nope")
    assert "404" in (err := capsys.readouterr().err)
    assert "no submission 'sub_nope'" in err


# -- acting ---------------------------------------------------------------------------------------


def test_refused_action_exits_1_with_detail(fake: FakeAdmin, capsys: Any) -> None:
    """409 from the gateway: exit 1, its title and detail on stderr, nothing on stdout."""
    fake.rows = [summary(1, "delivered")]
    assert 1 == run(fake, "outbox", "replay", "--id", "sub_0001")
    captured = capsys.readouterr()
    assert "" == captured.out
    assert "409 Not possible in the submission's current state): delivered" in captured.err


def test_force_resend_without_yes_sends_nothing(fake: FakeAdmin, capsys: Any) -> None:
    """Without --yes: exit 2, a warning about a second invoice, and no request at all."""
    assert 2 == run(fake, "outbox", "force-resend", "sub_0001", "--reason", "lost")
    assert "SECOND INVOICE" in capsys.readouterr().err
    assert [] == fake.requests
    assert 0 == run(fake, "outbox", "force-resend", "sub_0001", "--reason", "lost", "--yes")
    [(_, body)] = fake.asked("POST", "/admin/v1/submissions/sub_0001/force-resend")
    assert {"reason": "lost", "confirm": True} == body


def test_edit_sends_pointer_value_and_reason(fake: FakeAdmin) -> None:
    """`edit --set` is one PATCH with the pointer, the parsed value and the reason."""
    argv = ["outbox", "edit", "sub_0000", "--set", "/order/buyerTaxNum=X1", "--reason", "typo"]
    assert 0 == run(fake, *argv)
    [(_, body)] = fake.asked("PATCH", "/admin/v1/submissions/sub_0000/payload")
    assert {"pointer": "/order/buyerTaxNum", "value": "X1", "reason": "typo"} == body


def test_bulk_replay_follows_the_job_to_the_end(fake: FakeAdmin, capsys: Any) -> None:
    """A bulk replay starts a job, polls it until done, and prints the final job."""
    argv = ["outbox", "replay", "--state", "dead", "--reason", "back", "--poll-interval", "0.01"]
    assert 0 == run(fake, *argv, "--json")
    job = json.loads(capsys.readouterr().out)
    assert {"state": "done", "done": 5, "total": 5}.items() <= job.items()
    [(_, body)] = fake.asked("POST", "/admin/v1/replays")
    assert {"filter": {"state": "dead"}, "dry_run": False, "reason": "back"} == body


def test_bulk_replay_cancelled_elsewhere_exits_1(fake: FakeAdmin, capsys: Any) -> None:
    """A job that ends cancelled (not by us) is not a success."""
    fake.job_mode = "stuck"

    def cancel_soon() -> None:
        wait_until(lambda: fake.asked("GET", "/admin/v1/jobs/job_1"), timeout=5)
        fake.job["state"] = "cancelled"

    threading.Thread(target=cancel_soon, daemon=True).start()
    argv = ["outbox", "replay", "--state", "dead", "--reason", "back", "--poll-interval", "0.01"]
    assert 1 == run(fake, *argv)
    assert "cancelled" in capsys.readouterr().out


def test_dry_run_prints_the_count(fake: FakeAdmin, capsys: Any) -> None:
    """`--dry-run` asks for the count only and starts nothing."""
    assert 0 == run(fake, "outbox", "replay", "--state", "dead", "--dry-run", "--json")
    assert 5 == json.loads(capsys.readouterr().out)["count"]
    assert [] == fake.asked("GET", "/admin/v1/jobs/job_1")


def test_ctrl_c_cancels_the_bulk_job(fake: FakeAdmin) -> None:
    """SIGINT while a bulk replay runs: the job is cancelled through the API, exit 1."""
    fake.job_mode = "stuck"
    env = {**base_env(), "GATEWAY_ADMIN_TOKEN": OPERATOR}
    argv = ["outbox", "replay", "--state", "dead", "--reason", "r", "--url", fake.url]
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli.oncall", *argv, "--poll-interval", "0.05"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: len(fake.asked("GET", "/admin/v1/jobs/job_1")) >= 2, timeout=20)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert 1 == process.returncode
    assert [({}, None)] == fake.asked("POST", "/admin/v1/jobs/job_1/cancel")
    assert "cancelled bulk replay job_1" in err


# -- export and import ---------------------------------------------------------------------------


def test_export_to_a_file(fake: FakeAdmin, tmp_path: Path, capsys: Any) -> None:
    """`export -o FILE` writes every line and says how many."""
    target = tmp_path / "backup.jsonl"
    assert 0 == run(fake, "outbox", "export", "--state", "dead", "-o", str(target))
    assert fake.rows == json_lines(target.read_text())
    assert f"exported 7 submissions to {target}" in capsys.readouterr().out
    assert [target] == list(tmp_path.iterdir())


def test_export_unmasked_sends_the_reason(fake: FakeAdmin, tmp_path: Path) -> None:
    """`export --unmasked --reason TEXT` asks the gateway for every field, with the reason it
    audits; without --unmasked nothing of the kind is asked (the gateway masks)."""
    target = tmp_path / "backup.jsonl"
    argv = ["outbox", "export", "--unmasked", "--reason", "backup", "-o", str(target)]
    assert 0 == run(fake, *argv)
    assert 0 == run(fake, "outbox", "export", "-o", str(tmp_path / "masked.jsonl"))
    asked = [query for query, _ in fake.asked("GET", "/admin/v1/export")]
    assert [{"unmasked": "1", "reason": "backup"}, {}] == asked


def test_export_unmasked_without_a_reason_is_refused(fake: FakeAdmin, capsys: Any) -> None:
    """--unmasked without --reason is a usage error; nothing is asked."""
    assert 0 != run(fake, "outbox", "export", "--unmasked")
    assert "--reason" in capsys.readouterr().err
    assert [] == fake.asked("GET", "/admin/v1/export")


def test_export_cut_off_leaves_no_file(fake: FakeAdmin, tmp_path: Path, capsys: Any) -> None:
    """A transfer that breaks off is exit 1, and no file that looks like a whole backup."""
    fake.export_cut_after = 3
    target = tmp_path / "backup.jsonl"
    assert 1 == run(fake, "outbox", "export", "-o", str(target))
    assert "cut off" in capsys.readouterr().err
    assert [] == list(tmp_path.iterdir())


def test_export_to_stdout(fake: FakeAdmin, capsysbinary: Any) -> None:
    """Without -o the JSON Lines go to stdout."""
    assert 0 == run(fake, "outbox", "export")
    assert fake.rows == json_lines(capsysbinary.readouterr().out.decode())


def test_import_posts_the_file_and_refuses_a_second_time(
    fake: FakeAdmin, tmp_path: Path, capsys: Any
) -> None:
    """`import FILE` posts it as JSON Lines; the gateway's 409 is exit 1."""
    source = tmp_path / "backup.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in fake.rows))
    assert 0 == run(fake, "outbox", "import", str(source), "--json")
    assert {"imported": 7} == json.loads(capsys.readouterr().out)
    assert source.read_bytes() == fake.imported
    assert 1 == run(fake, "outbox", "import", str(source))
    assert 2 == run(fake, "outbox", "import", str(tmp_path / "missing.jsonl"))


# -- dispatcher, circuit, audit ------------------------------------------------------------------


def test_circuit_and_dispatcher_for_people(fake: FakeAdmin, capsys: Any) -> None:
    """`circuit open` and `outbox pause` show the new state in words."""
    assert 0 == run(fake, "circuit", "open", "--reason", "maintenance")
    assert "forced_open" in capsys.readouterr().out
    [(_, body)] = fake.asked("POST", "/admin/v1/circuit/open")
    assert {"reason": "maintenance"} == body
    assert 0 == run(fake, "outbox", "pause")
    assert "dispatcher paused" in capsys.readouterr().out
    assert 0 == run(fake, "outbox", "audit")
    assert "discard" in capsys.readouterr().out


def test_token_status_says_what_holds_token_calls_back(fake: FakeAdmin, capsys: Any) -> None:
    """`token status` shows the hold, its end, that a refresh ends it, and the call counts."""
    assert 0 == run(fake, "token", "status")
    out = capsys.readouterr().out
    assert "held      quota since" in out
    assert "`invoice-gateway token refresh` ends it" in out
    assert "31 in 30 days" in out


def test_token_refresh_needs_a_reason_and_sends_it(fake: FakeAdmin, capsys: Any) -> None:
    """`token refresh` without --reason is a usage error; with it, the reason is sent."""
    with pytest.raises(SystemExit) as usage:
        run(fake, "token", "refresh")
    assert 2 == usage.value.code
    assert [] == fake.asked("POST", "/admin/v1/token/refresh")
    assert 0 == run(fake, "token", "refresh", "--reason", "vendor reset the quota", "--json")
    assert json.loads(capsys.readouterr().out)["hold"] is None
    [(_, body)] = fake.asked("POST", "/admin/v1/token/refresh")
    assert {"reason": "vendor reset the quota"} == body


def test_a_refused_token_refresh_exits_1_with_the_gateway_s_words(
    fake: FakeAdmin, capsys: Any
) -> None:
    """The platform refusing again is exit 1, with the gateway's explanation on stderr."""
    fake.token_refusal = "the platform's token quota is used up (070306)"
    assert 1 == run(fake, "token", "refresh", "--reason", "try again")
    assert "token quota is used up" in capsys.readouterr().err


# -- exit codes ----------------------------------------------------------------------------------


def test_unknown_token_exits_4(
    fake: FakeAdmin, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """401: exit 4, telling what to set."""
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", "wrong")
    assert 4 == run(fake, "outbox", "list")
    err = capsys.readouterr().err
    assert "401: no such token" in err
    assert "GATEWAY_ADMIN_TOKEN" in err


def test_viewer_on_an_operator_route_exits_4(
    fake: FakeAdmin, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """403: exit 4, saying the operator role is needed."""
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", VIEWER)
    assert 0 == run(fake, "circuit", "status")
    assert 4 == run(fake, "circuit", "close")
    assert "operator role" in capsys.readouterr().err


def test_no_token_exits_4_without_a_request(
    fake: FakeAdmin, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """No token anywhere: exit 4 and nothing sent."""
    monkeypatch.delenv("GATEWAY_ADMIN_TOKEN")
    assert 4 == run(fake, "outbox", "list")
    assert "set GATEWAY_ADMIN_TOKEN" in capsys.readouterr().err
    assert [] == fake.requests


def test_token_file_wins_over_the_environment(
    fake: FakeAdmin, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """--token-file is read (stripped) and used instead of GATEWAY_ADMIN_TOKEN."""
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", "wrong")
    token_file = tmp_path / "token"
    token_file.write_text(OPERATOR + "\n")
    assert 0 == run(fake, "outbox", "list", "--token-file", str(token_file), "--json")
    assert 2 == run(fake, "outbox", "list", "--token-file", str(tmp_path / "missing"))


def test_unreachable_exits_3(capsys: Any) -> None:
    """Nothing listening: exit 3 with what to check."""
    url = f"http://127.0.0.1:{free_port()}"
    args = parser().parse_args(["outbox", "list", "--url", url])
    assert 3 == args.handler(args)
    err = capsys.readouterr().err
    assert f"cannot reach the gateway admin API at {url}: Connection refused" in err
    assert "is it running? is --url right?" in err


def test_no_answer_in_time_exits_3(fake: FakeAdmin) -> None:
    """A gateway that does not answer within --timeout is unreachable (exit 3)."""
    client = gateway.cli.oncall.AdminClient(fake.url, OPERATOR, timeout=0.2)
    started = time.monotonic()
    with pytest.raises(gateway.cli.oncall.AdminUnreachable, match="no answer in time") as error:
        client.call("GET", "/slow")
    assert 3 == error.value.exit_code
    assert time.monotonic() - started < 3


def test_url_env_is_the_default(fake: FakeAdmin, monkeypatch: pytest.MonkeyPatch) -> None:
    """GATEWAY_ADMIN_URL is used when --url is not given."""
    monkeypatch.setenv("GATEWAY_ADMIN_URL", fake.url)
    args = parser().parse_args(["outbox", "list", "--json"])
    assert 0 == args.handler(args)
    assert fake.requests


def test_bad_url_is_a_usage_error(capsys: Any) -> None:
    """--url that is not http(s): exit 2."""
    args = parser().parse_args(["outbox", "list", "--url", "file:///etc/passwd"])
    assert 2 == args.handler(args)
    assert "--url" in capsys.readouterr().err
