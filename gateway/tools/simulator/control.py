"""The control API under `/_sim/`: fault rules, scenarios, settings, the ledger, reset, health.

Answers are JSON; invalid input is answered 400 `{"error": "..."}` naming the problem.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateway.tools.simulator.faults import FaultSpecError
from gateway.tools.simulator.platform import Platform
from gateway.tools.simulator.scenarios import ScenarioError, scenario_rules
from gateway.tools.simulator.switches import SettingsError, apply_switches, switches


class ControlApi:
    """Handlers of `/_sim/*`. `on_faults_changed` runs after every change to the fault rules
    (the server uses it to close or reopen the API listener at once for `refuse`)."""

    def __init__(
        self, platform: Platform, *, on_faults_changed: Callable[[], Awaitable[None]]
    ) -> None:
        self._platform = platform
        self._on_faults_changed = on_faults_changed

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/_sim/health", self.health),
            web.get("/_sim/faults", self.list_faults),
            web.post("/_sim/faults", self.add_fault),
            web.delete("/_sim/faults", self.clear_faults),
            web.delete("/_sim/faults/{id}", self.remove_fault),
            web.post("/_sim/scenarios/{name}", self.start_scenario),
            web.get("/_sim/settings", self.settings),
            web.patch("/_sim/settings", self.change_settings),
            web.get("/_sim/ledger", self.ledger),
            web.post("/_sim/reset", self.reset),
        ]

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def list_faults(self, request: web.Request) -> web.Response:
        now = self._platform.clock.monotonic()
        return web.json_response(
            {"faults": [rule.to_json(now) for rule in self._platform.faults.rules(now)]}
        )

    async def add_fault(self, request: web.Request) -> web.Response:
        spec = await _json_body(request)
        try:
            rule = self._platform.add_fault(spec)
        except FaultSpecError as exc:
            raise _bad_request(str(exc)) from None
        await self._on_faults_changed()
        return web.json_response({"id": rule.id}, status=201)

    async def clear_faults(self, request: web.Request) -> web.Response:
        removed = self._platform.faults.clear()
        await self._on_faults_changed()
        return web.json_response({"removed": removed})

    async def remove_fault(self, request: web.Request) -> web.Response:
        rule_id = request.match_info["id"]
        if not self._platform.faults.remove(rule_id):
            raise web.HTTPNotFound(
                text=json.dumps({"error": f"no fault rule {rule_id!r}"}),
                content_type="application/json",
            )
        await self._on_faults_changed()
        return web.json_response({"removed": 1})

    async def start_scenario(self, request: web.Request) -> web.Response:
        overrides = await _json_body(request, empty={})
        if not isinstance(overrides, dict):
            raise _bad_request("scenario parameters must be a JSON object")
        try:
            specs = scenario_rules(request.match_info["name"], overrides)
        except ScenarioError as exc:
            raise _bad_request(str(exc)) from None
        ids = [self._platform.add_fault(spec).id for spec in specs]
        await self._on_faults_changed()
        return web.json_response({"ids": ids}, status=201)

    async def settings(self, request: web.Request) -> web.Response:
        """The settings that can change at run time (`gateway.tools.simulator.switches`)."""
        return web.json_response(switches(self._platform.settings))

    async def change_settings(self, request: web.Request) -> web.Response:
        """Change some of them; answers all of them as they are now."""
        change = await _json_body(request)
        try:
            self._platform.settings = apply_switches(self._platform.settings, change)
        except SettingsError as exc:
            raise _bad_request(str(exc)) from None
        return web.json_response(switches(self._platform.settings))

    async def ledger(self, request: web.Request) -> web.Response:
        """The ledger and counters; `?invoices=0` leaves out the per-invoice lists."""
        platform = self._platform
        with_invoices = request.query.get("invoices", "1") not in ("0", "false", "no")
        snapshot = platform.ledger.snapshot(platform.clock.monotonic(), with_invoices=with_invoices)
        snapshot["counters"] = platform.counters.to_json()
        return web.json_response(snapshot, dumps=_dumps)

    async def reset(self, request: web.Request) -> web.Response:
        self._platform.reset()
        await self._on_faults_changed()
        return web.json_response({"status": "reset"})


def _dumps(payload: Any) -> str:
    return json.dumps(payload, ensure_ascii=False)


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")


async def _json_body(request: web.Request, *, empty: object = None) -> object:
    body = await request.read()
    if not body.strip() and empty is not None:
        return empty
    try:
        return json.loads(body)
    except ValueError:
        raise _bad_request("the body must be JSON") from None
