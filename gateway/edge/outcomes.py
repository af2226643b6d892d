"""What the client gets (docs/design.md#outcomes): a pipeline `Outcome` as an HTTP response.

The platform's own answers (success, and verdicts such as `0201` or `E9106`) are relayed as
they came. Everything the gateway says itself is problem+json, in words an integrator can act on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from aiohttp import web

from gateway.edge.problem import problem_response
from gateway.headers import end_to_end
from gateway.operations import UNMATCHED, Operation, OperationKind
from gateway.outbox import settlement
from gateway.resilience.failures import FailureClass
from gateway.resilience.pipeline import Outcome

OUTCOME = "X-Gateway-Outcome"
#: Which endpoint answered a read or passthrough: `primary` or `backup`; sent only while a
#: backup endpoint is configured (`upstream.backup_url`).
UPSTREAM_ENDPOINT = "X-Gateway-Upstream"

DEFAULT_RETRY_AFTER = 5.0


@dataclass(slots=True)
class Exchange:
    """What one client request turned into; the access log line is made from it."""

    request_id: str
    tenant: str | None = None
    operation: Operation = UNMATCHED
    upstream_status: int | None = None
    outcome: str = "rejected"
    error_class: str | None = None
    attempts: int = 0
    #: The endpoint that answered (`primary`, `backup`); None without a backup endpoint.
    endpoint: str | None = None
    #: The submission a 202 named (its gateway serial, for an SDK client).
    submission_id: str | None = None
    #: An SDK call of a tenant with `answers: platform` (edge/platform_answers.py).
    platform_answers: bool = False


def respond(outcome: Outcome, operation: Operation, exchange: Exchange) -> web.Response:
    """The response for `outcome`, recording what happened on `exchange`; with a backup
    endpoint configured it names the endpoint of the last attempt (`X-Gateway-Upstream`)."""
    response = _respond(outcome, operation, exchange)
    if outcome.endpoint is not None:
        exchange.endpoint = response.headers[UPSTREAM_ENDPOINT] = outcome.endpoint.value
    return response


def _respond(outcome: Outcome, operation: Operation, exchange: Exchange) -> web.Response:
    verdict = outcome.verdict
    failure = verdict.failure
    exchange.attempts = outcome.attempts
    exchange.error_class = failure.value if failure else None
    response = verdict.response
    if response is not None:
        exchange.upstream_status = response.status
    if relays(outcome, operation) and response is not None:
        exchange.outcome = "forwarded"
        return web.Response(
            status=response.status, body=response.body, headers=end_to_end(response.headers)
        )
    return problem_for(outcome, operation, exchange)


def relays(outcome: Outcome, operation: Operation) -> bool:
    """Whether the platform's own answer goes to the client as it came: its word on the
    request (the settlement table's), or anything but a rejected token for a passthrough."""
    failure = outcome.verdict.failure
    if outcome.verdict.response is None:
        return False
    if operation.kind is OperationKind.PASSTHROUGH and failure is not FailureClass.AUTH:
        return True
    return settlement.relays(outcome)


def problem_for(outcome: Outcome, operation: Operation, exchange: Exchange) -> web.Response:
    """The problem+json a client gets when the platform's answer is not relayed."""
    verdict = outcome.verdict
    failure = verdict.failure
    assert failure is not None
    retry_after = verdict.retry_after if verdict.retry_after is not None else DEFAULT_RETRY_AFTER
    tried = f"after {outcome.attempts} attempt{'s' if outcome.attempts != 1 else ''}"
    submit = operation.kind is OperationKind.SUBMIT

    if failure is FailureClass.CIRCUIT_OPEN:
        status, slug, title = 503, "circuit-open", "Invoice platform unavailable (circuit open)"
        detail = (
            "the invoice platform has been failing, so the gateway is not sending requests to it "
            f"for now; nothing was sent. Retry after {math.ceil(retry_after)} s"
        )
    elif failure is FailureClass.AUTH:
        status, slug, title = 502, "upstream-auth-rejected", "Platform rejected the gateway"
        detail = (
            "the invoice platform rejected the gateway's access token even after renewing it; "
            "nothing was issued. The gateway operator must check the platform credentials"
        )
    elif failure is FailureClass.TOKEN_UNAVAILABLE:
        status, slug, title = (
            503,
            "upstream-auth-unavailable",
            "Cannot authenticate to the platform",
        )
        # The error names the cause: the token endpoint failing, or what holds token calls
        # back (wrong credentials, the token quota used up, back-off, a cap) and until when.
        detail = (
            f"no access token could be obtained from the platform: {verdict.error}. Nothing was "
            "sent; retry later"
        )
        retry_after = max(retry_after, 30.0)
    elif failure is FailureClass.CLOCK_SKEW:
        status, slug, title = 503, "upstream-clock-skew", "Gateway signature refused"
        detail = (
            "the invoice platform refused the gateway's signature and re-signing with the "
            "platform's own time did not help; nothing was issued. Retry later; the gateway "
            "operator must fix the host's clock (NTP) or the application secret"
        )
    elif submit and (failure.answer_lost or settlement.own_duplicate(outcome)):
        status, slug, title = 504, "outcome-unknown", "Outcome unknown"
        detail = (
            "the invoice platform received the submission but its answer was lost "
            f"({failure.value}); the invoice may already exist. Query its result by order number "
            "before sending it again; resending the same order number is detected as a duplicate"
        )
        retry_after = max(retry_after, 30.0)
    elif not failure.sent:
        status = 502 if operation.kind is OperationKind.PASSTHROUGH else 503
        slug, title = "upstream-unreachable", "Invoice platform unreachable"
        detail = (
            f"the invoice platform could not be reached {tried} ({failure.value}); nothing was "
            "sent. Retry later"
        )
    elif failure is FailureClass.TIMEOUT:
        status, slug, title = 504, "upstream-timeout", "Invoice platform did not answer"
        detail = f"the invoice platform did not answer in time {tried}"
    elif failure.answer_lost:
        # A passthrough whose answer was lost is a 504 (it was sent once, not retried).
        status = 504 if operation.kind is OperationKind.PASSTHROUGH else 502
        slug, title = "upstream-bad-answer", "Bad answer from the invoice platform"
        detail = (
            f"the invoice platform's answer was cut off or unreadable {tried} ({failure.value})"
        )
    else:
        status = 502 if operation.kind is OperationKind.PASSTHROUGH else 503
        slug, title = "upstream-unavailable", "Invoice platform unavailable"
        detail = (
            f"the invoice platform kept failing {tried} ({failure.value}, {outcome.stopped_by})"
        )
        if submit:
            detail += (
                "; retry with the same order number (the platform rejects duplicates, so a "
                "retry cannot issue twice)"
            )
    exchange.outcome = "rejected"
    return problem_response(
        status=status,
        slug=slug,
        title=title,
        detail=detail,
        request_id=exchange.request_id,
        headers={"Retry-After": str(max(1, math.ceil(retry_after)))},
        extra={"failure_class": failure.value, "attempts": outcome.attempts},
    )
