"""`invoice-gateway bench`: the project's own benchmark, run by hand and never a timed test. A
scenario (`scenarios`, registered with `@scenario`) starts the simulator and a gateway as child
processes (`platform`), proves what it depends on (`checks`: the circuit open, every 202 on
disk), drives load from wrk or a built-in asyncio generator (`generators`), and reports figures
with the machine and store they were measured on (`environment`) as a table or JSON (`report`);
`cli` holds the options and `run_bench`. Each gateway run gets a fresh temporary directory
(config, SQLite store, child logs) on a local disk (not tmpfs, where fsync costs nothing),
removed at the end unless `--keep`; a run on PostgreSQL (`--postgres`) gets a scratch database
on the server, dropped at the end (`postgres`).
"""

from gateway.tools.bench.checks import DurabilityCheck, count_submissions, open_circuit
from gateway.tools.bench.cli import DESCRIPTION, configure_parser, main, run_bench
from gateway.tools.bench.environment import (
    bench_environment,
    choose_store_parent,
    filesystem_type,
    process_cpu_seconds,
)
from gateway.tools.bench.generators import (
    WRK_MARKER,
    AiohttpGenerator,
    BodyTemplate,
    LoadGenerator,
    LoadResult,
    LoadTarget,
    WrkGenerator,
    body_templates,
    choose_generator,
    lua_string,
    parse_wrk_output,
    submit_headers,
    wrk_script,
)
from gateway.tools.bench.options import BenchError, BenchOptions
from gateway.tools.bench.platform import Platform, running_platform
from gateway.tools.bench.postgres import (
    DEFAULT_POSTGRES_URL,
    ScratchDatabase,
    ServerFacts,
    count_postgres_submissions,
    cpu_used,
    scratch_database,
    server_cpu,
    server_facts,
)
from gateway.tools.bench.report import Report, Row, format_table
from gateway.tools.bench.scenarios import (
    SCENARIOS,
    Scenario,
    StoreUnderTest,
    durable_accept_overrides,
    postgres_accept_overrides,
    postgres_store,
    scenario,
    sqlite_store,
)

__all__ = [
    "DEFAULT_POSTGRES_URL",
    "DESCRIPTION",
    "SCENARIOS",
    "WRK_MARKER",
    "AiohttpGenerator",
    "BenchError",
    "BenchOptions",
    "BodyTemplate",
    "DurabilityCheck",
    "LoadGenerator",
    "LoadResult",
    "LoadTarget",
    "Platform",
    "Report",
    "Row",
    "Scenario",
    "ScratchDatabase",
    "ServerFacts",
    "StoreUnderTest",
    "WrkGenerator",
    "bench_environment",
    "body_templates",
    "choose_generator",
    "choose_store_parent",
    "configure_parser",
    "count_postgres_submissions",
    "count_submissions",
    "cpu_used",
    "durable_accept_overrides",
    "filesystem_type",
    "format_table",
    "lua_string",
    "main",
    "open_circuit",
    "parse_wrk_output",
    "postgres_accept_overrides",
    "postgres_store",
    "process_cpu_seconds",
    "run_bench",
    "running_platform",
    "scenario",
    "scratch_database",
    "server_cpu",
    "server_facts",
    "sqlite_store",
    "submit_headers",
    "wrk_script",
]
