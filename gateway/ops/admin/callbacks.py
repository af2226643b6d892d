"""`/admin/v1/callbacks…`: the callback event queue (docs/callbacks.md) — what was sent to each
tenant, what is waiting or dead, and sending one again. A replay is written to the audit log
before it is made."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from gateway.errors import ActionNotAllowed, BadRequest, NotFound
from gateway.ops.admin.middleware import current_actor
from gateway.ops.admin.params import json_body, text_field
from gateway.outbox.callbacks import CallbackQueue, CallbackState
from gateway.outbox.oncall import OnCall

#: Events in one answer at most.
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100


class CallbackRoutes:
    def __init__(self, queue: CallbackQueue, oncall: OnCall, now: Callable[[], float]) -> None:
        self._queue = queue
        self._oncall = oncall
        self._now = now

    async def list(self, request: web.Request) -> web.Response:
        """`?state=pending,dead&tenant=T&submission_id=S&limit=N`, newest first."""
        params = request.query
        unknown = set(params) - {"state", "tenant", "submission_id", "limit"}
        if unknown:
            raise BadRequest(f"unknown query parameter {sorted(unknown)[0]!r}")
        states = [_state(text) for text in params.get("state", "").split(",") if text]
        events = await self._queue.callback_events(
            states=states,
            tenant=params.get("tenant"),
            submission_id=params.get("submission_id"),
            limit=_limit(params.get("limit")),
        )
        return web.json_response({"items": [event.view() for event in events]})

    async def replay(self, request: web.Request) -> web.Response:
        seq = _seq(request.match_info["id"])
        reason = text_field(await json_body(request, ("reason",)), "reason")
        await self._oncall.record(current_actor(), "callback-replay", reason, event=f"evt_{seq}")
        replayed = await self._queue.replay_callback(seq, now=self._now())
        if replayed is None:
            if not await self._queue.callback_events(seq=seq, limit=1):
                raise NotFound(f"no callback event evt_{seq}")
            raise ActionNotAllowed(f"evt_{seq} is being sent right now; replay it once it settled")
        return web.json_response(replayed.view())


def _state(text: str) -> CallbackState:
    try:
        return CallbackState(text)
    except ValueError:
        known = ", ".join(state.value for state in CallbackState)
        raise BadRequest(f"unknown state {text!r}; known: {known}") from None


def _limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_LIMIT
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise BadRequest(f"limit must be a whole number from 1 to {MAX_LIMIT}, got {text!r}")
    return int(text)


def _seq(text: str) -> int:
    number = text.removeprefix("evt_")
    if not number.isdigit() or len(number) > 18:
        raise NotFound(f"no callback event {text!r} (ids look like evt_42)")
    return int(number)
