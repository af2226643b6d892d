"""`/admin/v1/replays` and `/admin/v1/jobs/{id}`: replay by filter, as a job with progress."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from aiohttp import web

from gateway.errors import NotFound
from gateway.ops.admin.middleware import current_actor
from gateway.ops.admin.params import InvalidParameter, body_filter, json_body, text_field
from gateway.outbox.oncall import OnCall
from gateway.outbox.submissions import SubmissionQuery, SubmissionState

S = SubmissionState
#: What a replay can act on (as `gateway.outbox.oncall` decides); a replay filter is narrowed
#: to these, so the dry-run count is exactly what the job then touches.
REPLAYABLE = (S.QUEUED, S.UNKNOWN, S.DEAD, S.FAILED)
JOBS_PATH = "/admin/v1/jobs/"


class JobRoutes:
    def __init__(self, oncall: OnCall) -> None:
        self._oncall = oncall

    async def replay(self, request: web.Request) -> web.Response:
        """Dry run: how many would be replayed. Else: start the job, answer where to watch it."""
        body = await json_body(request, ("filter", "dry_run", "reason"))
        found = body_filter(body.get("filter"))
        dry_run = body.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise InvalidParameter("dry_run", f"must be true or false, got {dry_run!r}")
        query, echo = _replayable(found.query, found.echo)
        if dry_run:
            return web.json_response({"count": await self._oncall.count(query), "filter": echo})
        job = await self._oncall.start_replay_job(
            query, echo, current_actor(), text_field(body, "reason")
        )
        status_url = JOBS_PATH + job.id
        return web.json_response(
            {**job.view(), "status_url": status_url},
            status=202,
            headers={"Location": status_url},
        )

    async def show(self, request: web.Request) -> web.Response:
        job = self._oncall.jobs.get(request.match_info["id"])
        if job is None:
            raise NotFound(
                f"no job {request.match_info['id']!r} (jobs are kept in memory until a restart)"
            )
        return web.json_response(job.view())

    async def cancel(self, request: web.Request) -> web.Response:
        """Ask the job to stop after its current step; poll the job to see it stopped."""
        job = self._oncall.cancel_job(request.match_info["id"])
        return web.json_response(job.view())


def _replayable(
    query: SubmissionQuery, echo: dict[str, Any]
) -> tuple[SubmissionQuery, dict[str, Any]]:
    refused = [s.value for s in query.states if s not in REPLAYABLE]
    if refused:
        raise InvalidParameter(
            "filter.state",
            f"{', '.join(refused)} cannot be replayed; replay acts on "
            f"{', '.join(s.value for s in REPLAYABLE)} (a delivered submission is sent again "
            "only by force-resend, one at a time)",
        )
    states = query.states or REPLAYABLE
    return replace(query, states=states), {**echo, "state": [s.value for s in states]}
