"""The benchmark harness: wrk's script and output, the reports, the durability check, one real run.

Nothing here asserts on speed: the figures belong in docs/benchmarks.md, not in a test.
"""

# The /tmp and /var/tmp paths here are mount-point test data and labels; nothing is written there.
# ruff: noqa: S108

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.tools.bench import (
    SCENARIOS,
    WRK_MARKER,
    AiohttpGenerator,
    BenchError,
    BenchOptions,
    BodyTemplate,
    DurabilityCheck,
    LoadResult,
    LoadTarget,
    Report,
    Row,
    Scenario,
    apply_overrides,
    bench_environment,
    body_templates,
    choose_generator,
    configure_parser,
    count_submissions,
    durable_accept_overrides,
    filesystem_type,
    format_table,
    lua_string,
    parse_wrk_output,
    process_cpu_seconds,
    run_bench,
    scenario,
    submit_headers,
    wrk_script,
)
from gateway.tools.loadgen import SUBMIT_OPERATION
from gateway.tools.simulator.tax_numbers import make_tax_number
from tests.support.processes import ROOT

SELLER = make_tax_number(4242)

#: Captured from a real `durable-accept` run (wrk 4.1.0, 1 thread, 8 connections, 2 s).
WRK_OUTPUT = """\
Running 2s test @ http://127.0.0.1:35169/open/v1/services
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    17.85ms    4.80ms  54.24ms   89.57%
    Req/Sec   451.15     78.72   640.00     85.00%
  900 requests in 2.00s, 411.33KB read
Requests/sec:    448.92
Transfer/sec:    205.17KB
BENCH-RESULT {"duration_us": 2004793, "requests": 900, "errors": {"connect": 0, "read": 0, \
"write": 0, "timeout": 0}, "latency_us": {"p50": 17329, "p99": 36114}, "statuses": {"202": 900}, \
"outcomes": {"queued": 900}}
"""


def load(statuses: dict[int, int], socket_errors: dict[str, int] | None = None) -> LoadResult:
    return LoadResult(
        generator="wrk test",
        elapsed_s=2.0,
        statuses=statuses,
        socket_errors=socket_errors or {},
        outcomes={},
        latency_p50_ms=10.0,
        latency_p99_ms=30.0,
    )


def target(prefix: str = "Babc123") -> LoadTarget:
    return LoadTarget(
        base_url="http://127.0.0.1:1",
        headers=submit_headers("tenant-key"),
        templates=body_templates(SELLER, count=4),
        order_prefix=prefix,
    )


# -- wrk's output -------------------------------------------------------------------------------


def test_wrk_output_gives_statuses_rate_and_latency() -> None:
    """The result line of a real wrk run becomes counts, a rate over wrk's duration and ms."""
    result = parse_wrk_output(WRK_OUTPUT, "wrk 4.1.0")
    assert {202: 900} == dict(result.statuses)
    assert {"queued": 900} == dict(result.outcomes)
    assert 2.004793 == result.elapsed_s
    assert pytest.approx(900 / 2.004793) == result.rate(202)
    assert (17.329, 36.114) == (result.latency_p50_ms, result.latency_p99_ms)
    assert {} == result.errors(202)
    assert "wrk 4.1.0" == result.generator


def test_wrk_output_counts_other_statuses_and_socket_errors_as_errors() -> None:
    """Non-202 answers are errors by status; requests without an answer by socket error kind."""
    line = (
        f'{WRK_MARKER}{{"duration_us": 1000000, "requests": 12, "errors": {{"connect": 0, '
        '"read": 3, "write": 0, "timeout": 1}, "latency_us": {"p50": 900, "p99": 2000}, '
        '"statuses": {"202": 10, "503": 2}, "outcomes": {"queued": 10, "rejected": 2}}'
    )
    result = parse_wrk_output(f"Running 1s test\n{line}\n")
    assert {"503": 2, "socket read": 3, "socket timeout": 1} == result.errors(202)
    assert 12 == result.answers


def test_wrk_output_without_a_result_line_is_an_error_showing_the_output() -> None:
    """When our script's done() printed nothing, the error carries wrk's last lines."""
    with pytest.raises(BenchError, match=r"no result line(.|\n)*Requests/sec"):
        parse_wrk_output(WRK_OUTPUT.split(WRK_MARKER)[0])


def test_wrk_output_with_a_broken_result_line_is_an_error() -> None:
    """A result line that is not the JSON we print is reported, not half-read."""
    with pytest.raises(BenchError, match="cannot read wrk's result line"):
        parse_wrk_output(f'{WRK_MARKER}{{"duration_us": 1}}\n')


def test_wrk_output_without_requests_has_no_latency() -> None:
    """No request answered: no percentiles rather than wrk's zeros."""
    line = (
        f'{WRK_MARKER}{{"duration_us": 1000000, "requests": 0, "errors": {{"connect": 8, '
        '"read": 0, "write": 0, "timeout": 0}, "latency_us": {"p50": 0, "p99": 0}, '
        '"statuses": {}, "outcomes": {}}'
    )
    result = parse_wrk_output(line)
    assert (None, None) == (result.latency_p50_ms, result.latency_p99_ms)
    assert {"socket connect": 8} == result.errors(202)


# -- the Lua script -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", "[[plain]]"),
        ('{"a":"]]"}', '[=[{"a":"]]"}]=]'),
        ("x]]y]=]z", "[==[x]]y]=]z]==]"),
    ],
)
def test_lua_long_strings_cannot_be_closed_by_their_contents(text: str, expected: str) -> None:
    """The bracket level is the lowest one whose closing bracket is not in the text."""
    assert expected == lua_string(text)


def test_body_templates_render_valid_distinct_bodies_with_the_order_number() -> None:
    """Each template renders JSON whose /order/orderNo is exactly the number given."""
    templates = body_templates(SELLER, count=8)
    bodies = [json.loads(t.render(f"B1n{i}")) for i, t in enumerate(templates)]
    assert [f"B1n{i}" for i in range(8)] == [b["order"]["orderNo"] for b in bodies]
    assert all(b["order"]["salerTaxNum"] == SELLER for b in bodies)
    assert all(b["order"]["invoiceDetail"] for b in bodies)
    assert 8 == len({t.tail for t in templates})
    assert all("\n" not in t.head + t.tail for t in templates)


def test_wrk_script_holds_the_bodies_headers_and_a_unique_order_number_per_request() -> None:
    """The script embeds every body half and header, and builds `prefix .. thread .. n .. count`."""
    bench_target = target("Bfeed01")
    script = wrk_script(bench_target)
    for template in bench_target.templates:
        assert f"{{{lua_string(template.head)}, {lua_string(template.tail)}}}" in script
    for name, value in submit_headers("tenant-key").items():
        assert f"[ {lua_string(name)} ] = {lua_string(value)}" in script
    assert f"local order_prefix = {lua_string('Bfeed01')}" in script
    assert 'local order_no = order_prefix .. thread_id .. "n" .. counter' in script
    assert "counter = counter + 1" in script
    assert 'thread:set("thread_id", #threads)' in script
    assert "body[1] .. order_no .. body[2]" in script
    assert f"local marker = {lua_string(WRK_MARKER)}" in script


def test_the_order_number_scheme_never_repeats_across_threads_and_requests() -> None:
    """What the script computes, in Python: prefix + thread id + "n" + counter is unique."""
    bench_target = target("B0")
    seen = set()
    for thread_id in range(1, 13):
        for counter in range(1, 2_000):
            template = bench_target.templates[counter % len(bench_target.templates)]
            order_no = f"{bench_target.order_prefix}{thread_id}n{counter}"
            seen.add(json.loads(template.render(order_no))["order"]["orderNo"])
    assert 12 * 1_999 == len(seen)


async def _recording_server(order_nos: list[str]) -> TestServer:
    async def handle(request: web.Request) -> web.Response:
        assert SUBMIT_OPERATION == request.headers["method"]
        assert "tenant-key" == request.headers["X-Api-Key"]
        order_nos.append((await request.json())["order"]["orderNo"])
        status = 503 if len(order_nos) % 10 == 0 else 202
        outcome = "rejected" if status == 503 else "queued"
        return web.json_response({}, status=status, headers={"X-Gateway-Outcome": outcome})

    app = web.Application()
    app.router.add_post("/open/v1/services", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


@pytest.mark.integration
async def test_wrk_runs_the_generated_script_with_unique_order_numbers(tmp_path: Path) -> None:
    """Real wrk with the generated script: valid bodies, every order number new, all counted."""
    from gateway.tools.bench import WrkGenerator

    order_nos: list[str] = []
    server = await _recording_server(order_nos)
    try:
        bench_target = LoadTarget(
            base_url=str(server.make_url("/")),
            headers=submit_headers("tenant-key"),
            templates=body_templates(SELLER, count=4),
            order_prefix="Bwrk",
        )
        generator = WrkGenerator(shutil.which("wrk") or "wrk")
        result = await generator.run(bench_target, duration_s=1, connections=4, workdir=tmp_path)
    finally:
        await server.close()
    assert order_nos
    assert len(order_nos) == len(set(order_nos))
    assert result.answers <= len(order_nos)
    assert result.count(503) > 0
    assert result.count(202) == result.outcomes["queued"]


async def test_builtin_generator_sends_unique_order_numbers_and_counts_answers(
    tmp_path: Path,
) -> None:
    """The asyncio fallback: every request a new order number; statuses and outcomes counted."""
    order_nos: list[str] = []
    server = await _recording_server(order_nos)
    try:
        bench_target = LoadTarget(
            base_url=str(server.make_url("/")),
            headers=submit_headers("tenant-key"),
            templates=body_templates(SELLER, count=4),
            order_prefix="Bio",
        )
        result = await AiohttpGenerator().run(
            bench_target, duration_s=0.3, connections=4, workdir=tmp_path
        )
    finally:
        await server.close()
    assert len(order_nos) == len(set(order_nos)) == result.answers
    assert len(order_nos) // 10 == result.count(503)
    assert result.count(202) == result.outcomes["queued"]
    assert {"503": result.count(503)} == result.errors(202)
    assert result.latency_p50_ms is not None


# -- durability ---------------------------------------------------------------------------------


def test_durability_holds_when_the_store_has_at_least_every_acknowledged_row() -> None:
    """Rows >= 202s is fine (requests cut off at the end may be stored unanswered); fewer is not."""
    assert DurabilityCheck(rows=105, acknowledged=100).ok
    assert DurabilityCheck(rows=100, acknowledged=100).ok
    short = DurabilityCheck(rows=98, acknowledged=100)
    assert not short.ok
    assert "98 rows for 100 acknowledged: MISSING 2" == short.describe()


def test_count_submissions_reads_the_submission_table(tmp_path: Path) -> None:
    """The stopped gateway's SQLite file is counted directly."""
    path = tmp_path / "gateway.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE submission (seq INTEGER PRIMARY KEY, id TEXT)")
        db.executemany("INSERT INTO submission (id) VALUES (?)", [(str(i),) for i in range(7)])
        db.commit()
    assert 7 == count_submissions(path)


def test_count_submissions_without_a_store_or_table_is_an_error(tmp_path: Path) -> None:
    """No file, or no submission table, is a failed check rather than zero rows."""
    with pytest.raises(BenchError, match="left no store"):
        count_submissions(tmp_path / "missing.db")
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    with pytest.raises(BenchError, match="cannot count"):
        count_submissions(empty)


# -- reports ------------------------------------------------------------------------------------


def sample_report(*, rows_on: int = 1_000) -> Report:
    report = Report(
        scenario="durable-accept",
        measure="accepted",
        environment={"store": "/var/tmp (ext4)", "generator": "wrk 4.1.0, 1 thread(s)"},
    )
    for label, accepted, rows in (("on", 900, rows_on), ("off", 300, 310)):
        durability = DurabilityCheck(rows=rows, acknowledged=accepted)
        report.rows.append(
            Row(
                label=f"group commit {label}",
                settings={"group_commit": label, "synchronous": "FULL"},
                load=load({202: accepted, 503: 1}, socket_errors={"timeout": 2}),
                good_status=202,
                durability=durability,
                notes={"durability": durability.describe()},
            )
        )
        if not durability.ok:
            report.problems.append(f"group commit {label}: {durability.describe()}")
    report.ratios["group commit on / off"] = 3.0
    return report


def test_table_shows_each_run_the_ratio_and_ok() -> None:
    """One line per run with rate, count, latency, rows, verdict and errors; then the ratio."""
    text = format_table(sample_report())
    assert "invoice-gateway bench: durable-accept" in text
    assert re.search(r"group commit on\s+450\.0\s+900\s+10\.0\s+30\.0\s+1000\s+yes\s+503: 1", text)
    assert "socket timeout: 2" in text
    assert "group commit on / off: 3.00x" in text
    assert re.search(r"store\s+/var/tmp \(ext4\)", text)
    assert text.rstrip().endswith("ok")


def test_table_names_a_failed_durability_check() -> None:
    """Fewer rows than 202s shows `NO` and a PROBLEM line, and the report is not ok."""
    report = sample_report(rows_on=899)
    text = format_table(report)
    assert not report.ok
    assert re.search(r"group commit on .*\bNO\b", text)
    assert "PROBLEM: group commit on: 899 rows for 900 acknowledged: MISSING 1" in text


def test_json_report_shape() -> None:
    """The machine-readable report: runs with counts, rates, latency and durability; ratios."""
    document = json.loads(json.dumps(sample_report().to_json()))
    assert {"scenario", "measure", "ok", "environment", "runs", "ratios", "problems"} == set(
        document
    )
    first = document["runs"][0]
    assert {
        "label": "group commit on",
        "good_status": 202,
        "good": 900,
        "good_per_s": 450.0,
        "statuses": {"202": 900, "503": 1},
        "errors": {"503": 1, "socket timeout": 2},
        "latency_ms": {"p50": 10.0, "p99": 30.0},
        "durability": {"rows": 1000, "acknowledged": 900, "ok": True},
    }.items() <= first.items()
    assert {"group commit on / off": 3.0} == document["ratios"]
    assert document["ok"] is True


# -- set-up pieces ------------------------------------------------------------------------------

MOUNTINFO = """\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
25 22 0:21 / /tmp rw,nosuid shared:5 - tmpfs tmpfs rw,size=1024k
26 22 254:2 / /var/tmp rw,relatime shared:6 - xfs /dev/vda2 rw
27 22 254:3 / /mnt/my\\040disk rw,relatime shared:7 - btrfs /dev/vdb rw
"""


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/tmp/run-1", "tmpfs"),
        ("/tmp", "tmpfs"),
        ("/tmpish/run", "ext4"),
        ("/var/tmp/invoice-gateway-bench", "xfs"),
        ("/mnt/my disk/x", "btrfs"),
        ("/home/someone", "ext4"),
    ],
)
def test_filesystem_type_is_that_of_the_deepest_mount_holding_the_path(
    path: str, expected: str
) -> None:
    """Longest mount-point prefix wins, on whole path components, with octal escapes decoded."""
    assert expected == filesystem_type(Path(path), MOUNTINFO)


def test_overrides_set_nested_keys_and_none_switches_a_section_off() -> None:
    """Dotted keys reach into the profile; None becomes null (e.g. no background probe)."""
    config = {"log": {"level": "info"}, "resilience": {"probe": {"interval": "15s"}}}
    apply_overrides(
        config, {"log.level": "warning", "resilience.probe": None, "outbox.group_commit": False}
    )
    assert {
        "log": {"level": "warning"},
        "resilience": {"probe": None},
        "outbox": {"group_commit": False},
    } == config


def test_durable_accept_measures_fsync_per_commit_with_quiet_logs_and_a_circuit_kept_open() -> None:
    """The only differences from the default profile in this scenario, and why they are there."""
    assert {
        "log.level": "warning",
        "outbox.synchronous": "FULL",
        "outbox.group_commit": False,
        "resilience.breaker.reset_timeout": "1h",
        "resilience.probe": None,
    } == durable_accept_overrides(group_commit=False)


def test_process_cpu_seconds_of_ourselves_and_of_nobody() -> None:
    """Our own CPU time is a number (on Linux); an unknown process gives None."""
    if Path("/proc/self/stat").exists():
        assert (process_cpu_seconds(os.getpid()) or 0.0) >= 0.0
    assert process_cpu_seconds(None) is None


# -- the command line and the registry ----------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    return parser.parse_args(list(argv))


def test_parser_defaults_and_the_registered_scenario() -> None:
    """durable-accept is registered; 10 s, 64 connections, both group-commit settings."""
    args = parse("--scenario", "durable-accept")
    assert ("durable-accept", 10.0, 64, "both", False) == (
        args.scenario,
        args.duration,
        args.connections,
        args.group_commit,
        args.json,
    )
    assert "durable-accept" in SCENARIOS


@pytest.mark.parametrize(
    "argv",
    [
        ("--scenario", "nope"),
        ("--scenario", "durable-accept", "--connections", "0"),
        ("--scenario", "durable-accept", "--duration", "-1"),
        ("--scenario", "durable-accept", "--group-commit", "maybe"),
        (),
    ],
)
def test_parser_refuses_bad_arguments(argv: tuple[str, ...]) -> None:
    """Unknown scenarios, non-positive numbers and bad choices are usage errors."""
    with contextlib.redirect_stderr(io.StringIO()), pytest.raises(SystemExit) as raised:
        parse(*argv)
    assert 2 == raised.value.code


def test_a_scenario_name_can_be_registered_once() -> None:
    """A second registration under the same name is a mistake, caught at import."""
    with pytest.raises(ValueError, match="registered twice"):
        scenario("durable-accept", "again")(SCENARIOS["durable-accept"].run)


@pytest.fixture
def fake_scenario(monkeypatch: pytest.MonkeyPatch) -> list[BenchOptions]:
    seen: list[BenchOptions] = []

    async def run(options: BenchOptions) -> Report:
        seen.append(options)
        return sample_report(rows_on=899 if options.connections == 13 else 1_000)

    monkeypatch.setitem(SCENARIOS, "fake", Scenario("fake", "a test double", run))
    return seen


def test_run_bench_prints_json_and_exits_0_when_every_check_holds(
    fake_scenario: list[BenchOptions], capsys: pytest.CaptureFixture[str]
) -> None:
    """--json prints the report alone on stdout; the options reach the scenario."""
    code = run_bench(
        parse("--scenario", "fake", "--json", "--duration", "3", "--group-commit", "on")
    )
    assert 0 == code
    assert "durable-accept" == json.loads(capsys.readouterr().out)["scenario"]
    assert (3.0, "on") == (fake_scenario[0].duration_s, fake_scenario[0].group_commit)


def test_run_bench_exits_1_when_a_check_fails(
    fake_scenario: list[BenchOptions], capsys: pytest.CaptureFixture[str]
) -> None:
    """A durability mismatch is an error: exit 1, with the table saying why."""
    assert 1 == run_bench(parse("--scenario", "fake", "--connections", "13"))
    assert "PROBLEM" in capsys.readouterr().out


def test_run_bench_refuses_a_store_dir_that_is_not_a_directory(
    fake_scenario: list[BenchOptions], tmp_path: Path
) -> None:
    """--store-dir must exist; nothing runs otherwise."""
    with contextlib.redirect_stderr(io.StringIO()):
        code = run_bench(parse("--scenario", "fake", "--store-dir", str(tmp_path / "nope")))
    assert (2, []) == (code, fake_scenario)


def test_body_template_render_is_plain_concatenation() -> None:
    """head + order number + tail, UTF-8 encoded."""
    assert '{"o":"X1","n":"发票"}'.encode() == BodyTemplate('{"o":"', '","n":"发票"}').render("X1")


# -- one real run -------------------------------------------------------------------------------


def _bench_command() -> list[str]:
    """`python -m gateway bench` once the CLI has the subcommand, else the module itself."""
    from gateway.cli.main import build_parser

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            build_parser().parse_args(["bench", "--scenario", "durable-accept"])
    except SystemExit:
        return [sys.executable, "-m", "gateway.tools.bench"]
    return [sys.executable, "-m", "gateway", "bench"]


@pytest.mark.integration
def test_a_short_durable_accept_run_accepts_and_keeps_every_submission() -> None:
    """2 s with the circuit open: exit 0, submissions accepted, every 202 in the store."""
    argv = [*_bench_command(), "--scenario", "durable-accept", "--duration", "2"]
    argv += ["--connections", "8", "--group-commit", "on", "--json"]
    completed = subprocess.run(
        argv,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert 0 == completed.returncode, completed.stderr + completed.stdout
    report = json.loads(completed.stdout)
    assert ("durable-accept", True, []) == (report["scenario"], report["ok"], report["problems"])
    (run,) = report["runs"]
    assert {"group_commit": "on", "synchronous": "FULL"} == run["settings"]
    assert run["good"] > 0
    assert run["good"] == run["statuses"]["202"] == run["outcomes"].get("queued")
    assert run["durability"]["ok"] is True
    assert run["durability"]["rows"] >= run["durability"]["acknowledged"] >= run["good"]
    assert run["latency_ms"]["p50"] is not None
    assert "generator" in report["environment"]
    assert "circuit open" in completed.stderr


def test_environment_names_the_generator_store_filesystem_and_machine(tmp_path: Path) -> None:
    """Every report says what drove the load, where the store was (and on what), and the CPUs."""
    generator = choose_generator(builtin=True)
    options = BenchOptions(scenario="durable-accept", connections=8, store_parent=tmp_path)
    with contextlib.redirect_stderr(io.StringIO()):
        parent, environment = bench_environment(options, generator)
    assert tmp_path == parent
    assert "built-in asyncio/aiohttp" == environment["generator"]
    assert environment["store"].startswith(f"{tmp_path} (")
    assert {"connections", "duration", "cpus", "cpu", "load average"} <= environment.keys()
