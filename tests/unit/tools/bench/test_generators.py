"""The load generators: wrk's Lua script and output, the built-in generator, the bodies sent."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.tools.bench import (
    WRK_MARKER,
    AiohttpGenerator,
    BenchError,
    BodyTemplate,
    WrkGenerator,
    body_templates,
    lua_string,
    parse_wrk_output,
    submit_headers,
    wrk_script,
)
from gateway.tools.loadgen import SUBMIT_OPERATION
from tests.unit.tools.bench.samples import SELLER, target

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
    order_nos: list[str] = []
    server = await _recording_server(order_nos)
    try:
        bench_target = target("Bwrk", str(server.make_url("/")))
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
        bench_target = target("Bio", str(server.make_url("/")))
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


def test_body_template_render_is_plain_concatenation() -> None:
    """head + order number + tail, UTF-8 encoded."""
    assert '{"o":"X1","n":"发票"}'.encode() == BodyTemplate('{"o":"', '","n":"发票"}').render("X1")
