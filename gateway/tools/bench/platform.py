"""The simulator and a gateway as child processes for one measured run (`running_platform`),
the gateway on the default profile with the scenario's overrides (through the harness the tools
share, `gateway.tools.children`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from gateway.tools.children import (
    Child,
    Credentials,
    Endpoints,
    gateway_child,
    simulator_child,
    stop_children,
    wait_ready,
    write_gateway_config,
)


@dataclass(frozen=True, slots=True)
class Platform:
    """A running simulator and gateway, and where the gateway keeps its store."""

    credentials: Credentials
    endpoints: Endpoints
    config: Mapping[str, Any]
    #: The SQLite store's file; None when the store is elsewhere (PostgreSQL).
    store_path: Path | None
    simulator: Child
    gateway: Child


@contextlib.asynccontextmanager
async def running_platform(
    workdir: Path, session: aiohttp.ClientSession, overrides: Mapping[str, Any]
) -> AsyncIterator[Platform]:
    """The simulator and a gateway (default profile + `overrides`), stopped on exit."""
    credentials = Credentials.generate()
    endpoints = Endpoints.allocate()
    config_path = write_gateway_config(workdir, endpoints, overrides)
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    env = credentials.child_env()
    simulator = simulator_child(endpoints, env, workdir)
    gateway = gateway_child(config_path, env, workdir)
    children = [simulator, gateway]
    try:
        for child in children:
            child.start()
        await asyncio.gather(
            wait_ready(simulator, session, f"{endpoints.control_url}/_sim/health"),
            wait_ready(gateway, session, f"{endpoints.gateway_url}/healthz"),
        )
        store_url = str(config["store_url"])
        store_path = (
            Path(store_url.removeprefix("sqlite:///"))
            if store_url.startswith("sqlite:///")
            else None
        )
        yield Platform(credentials, endpoints, config, store_path, simulator, gateway)
    finally:
        await asyncio.to_thread(stop_children, children)
