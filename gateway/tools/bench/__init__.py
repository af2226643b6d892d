"""`invoice-gateway bench`: the project's own benchmark, run by hand and never a timed test. A
scenario (registered with `@scenario` from `scenarios`, which holds `durable-accept`;
`passthrough`, `drain`, `memory` and `suite` (`all` of them) hold the others) starts what it
measures as child processes — the simulator and a gateway (`platform`), or nginx as a fast
platform and a reference proxy (`nginx`, `reference_proxy`) —, proves what it depends on
(`checks`: the circuit open, every 202 on disk), drives load from wrk or a built-in asyncio
generator (`generators`), and reports figures, ratios and the performance targets met or not,
with the machine and store they were measured on (`environment`), as a table or JSON (`report`);
`cli` holds the options and `run_bench`. Each run gets a fresh temporary directory (config,
SQLite store, child logs) on a local disk (not tmpfs, where fsync costs nothing), removed at the
end unless `--keep`; a run on PostgreSQL (`--postgres`) gets a scratch database on the server,
dropped at the end (`postgres`).
"""

from gateway.tools.bench.checks import DurabilityCheck, count_submissions, open_circuit
from gateway.tools.bench.cli import DESCRIPTION, configure_parser, main, run_bench
from gateway.tools.bench.drain import drain
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
from gateway.tools.bench.memory import memory
from gateway.tools.bench.options import BenchError, BenchOptions
from gateway.tools.bench.passthrough import pass_through
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
from gateway.tools.bench.report import Report, Row, TargetCheck, format_table
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
from gateway.tools.bench.suite import combine, everything

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
    "TargetCheck",
    "WrkGenerator",
    "bench_environment",
    "body_templates",
    "choose_generator",
    "choose_store_parent",
    "combine",
    "configure_parser",
    "count_postgres_submissions",
    "count_submissions",
    "cpu_used",
    "drain",
    "durable_accept_overrides",
    "everything",
    "filesystem_type",
    "format_table",
    "lua_string",
    "main",
    "memory",
    "open_circuit",
    "parse_wrk_output",
    "pass_through",
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
