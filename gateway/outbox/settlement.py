"""One table from an attempt's result to what becomes of the submission.

Read by both paths that send submissions — the live path (`gateway.edge.intake`, while the
client waits) and the dispatcher (`gateway.outbox.dispatcher`, from the outbox) — and by the
edge to decide whether the client gets the platform's own answer. A failure class means the
same thing on both paths:

    failure class                               settles as   the row        may have acted  client
    (success)                                   delivered    delivered      yes             answer
    refused, connect_timeout, token_unavailable,
    clock_skew, circuit_open                    retry        queued         no              202
    busy, http_429, quota, auth                 retry        queued         no              202
    http_5xx                                    reconcile    unknown        maybe           202
    timeout, connection_lost, truncated,
    unparsable                                  reconcile    unknown        maybe           202
    permanent, http_4xx                         failed       failed         no (verdict)    answer
    duplicate                                   duplicate    an attempt of ours reached the
                                                             platform: unknown, reconciled;
                                                             none did: failed (used elsewhere)

"may have acted" is what decides exactly-once: a row that may have been issued is never resent
blindly; it is reconciled first. Quota (daily quota, paid-API calls used up) is the platform
declining to act now: the submission waits and is retried, it is not the platform's verdict.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from gateway.outbox.submissions import SubmissionState
from gateway.resilience.failures import FailureClass
from gateway.resilience.pipeline import Outcome


class Settlement(StrEnum):
    """What one sending of a submission came to."""

    DELIVERED = "delivered"
    #: Not processed by the platform: queued again, resent after back-off.
    RETRY = "retry"
    #: May have been processed: `unknown`, reconciled before anything is resent.
    RECONCILE = "reconcile"
    #: The platform's verdict on the submission: `failed`, final.
    FAILED = "failed"
    #: The platform already has the business key: ours (reconcile) or someone else's (failed).
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class Rule:
    settles: Settlement
    #: Whether the platform may have acted on the submission (issued the invoice).
    may_have_acted: bool


_RETRY = Rule(Settlement.RETRY, may_have_acted=False)
_RECONCILE = Rule(Settlement.RECONCILE, may_have_acted=True)
_FAILED = Rule(Settlement.FAILED, may_have_acted=False)

#: The table. Every `FailureClass` has a row (a test checks), so a new class cannot be added
#: without saying what it does to a submission.
RULES: Final[dict[FailureClass, Rule]] = {
    # Never reached the platform, or refused before it read the request.
    FailureClass.REFUSED: _RETRY,
    FailureClass.CONNECT_TIMEOUT: _RETRY,
    FailureClass.TOKEN_UNAVAILABLE: _RETRY,
    FailureClass.CLOCK_SKEW: _RETRY,
    FailureClass.CIRCUIT_OPEN: _RETRY,
    # The platform answered, declining to act now (the gateway's token, not the invoice, for
    # auth; a quota resets, so it is not a verdict).
    FailureClass.BUSY: _RETRY,
    FailureClass.HTTP_429: _RETRY,
    FailureClass.QUOTA: _RETRY,
    FailureClass.AUTH: _RETRY,
    # A server error may come after the platform acted.
    FailureClass.HTTP_5XX: _RECONCILE,
    # Sent, answer lost.
    FailureClass.TIMEOUT: _RECONCILE,
    FailureClass.CONNECTION_LOST: _RECONCILE,
    FailureClass.TRUNCATED: _RECONCILE,
    FailureClass.UNPARSABLE: _RECONCILE,
    # The platform's final word on this submission.
    FailureClass.PERMANENT: _FAILED,
    FailureClass.HTTP_4XX: _FAILED,
    FailureClass.DUPLICATE: Rule(Settlement.DUPLICATE, may_have_acted=False),
}


def settle(outcome: Outcome, *, sent_before: bool = False) -> Settlement:
    """What `outcome` means for the submission; `sent_before` says whether an earlier sending
    (recorded on the row) may have reached the platform. A duplicate answer is resolved here:
    after an attempt of ours that reached the platform it is ours (reconcile), else it was
    used elsewhere (failed)."""
    failure = outcome.verdict.failure
    if failure is None:
        return Settlement.DELIVERED
    settles = RULES[failure].settles
    if settles is Settlement.DUPLICATE:
        ours = sent_before or any(f.sent for f in outcome.failures[:-1])
        return Settlement.RECONCILE if ours else Settlement.FAILED
    return settles


def may_have_acted(outcome: Outcome) -> bool:
    """Whether any attempt of `outcome` may have made the platform act on the submission."""
    return any(RULES[f].may_have_acted for f in outcome.failures)


def waiting_state(*, maybe_sent: bool) -> SubmissionState:
    """The state of a row waiting for its next sending: `unknown` once it may have been
    issued (reconciled first), else `queued`."""
    return SubmissionState.UNKNOWN if maybe_sent else SubmissionState.QUEUED


def own_duplicate(outcome: Outcome) -> bool:
    """A duplicate answer after an attempt of this outcome reached the platform: ours."""
    return settle(outcome) is Settlement.RECONCILE and (
        outcome.verdict.failure is FailureClass.DUPLICATE
    )


def relays(outcome: Outcome) -> bool:
    """Whether the platform's answer is its word on the submission, for the client as it came:
    success, a verdict, or a duplicate code for an order number used elsewhere."""
    return outcome.verdict.response is not None and settle(outcome) in (
        Settlement.DELIVERED,
        Settlement.FAILED,
    )
