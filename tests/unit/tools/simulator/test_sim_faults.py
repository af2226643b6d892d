"""Fault rules: each kind's effect, and probability / count / window semantics."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from gateway.tools.simulator import QUERY_INVOICE_RESULT, REQUEST_BILLING

QUERY = {"orderNos": ["ORD-1"]}


async def eventually(condition, *, attempts=200):
    """Wait (briefly, for real) until a server-side effect is visible."""
    for _ in range(attempts):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never became true")


async def test_reset_aborts_the_connection_and_processes_nothing(platform, sim):
    """kind=reset: the client sees a reset connection and the ledger stays empty."""
    await platform.token()
    await platform.add_fault(kind="reset", operations=[REQUEST_BILLING])

    with pytest.raises(aiohttp.ClientConnectionError):
        await platform.issue("ORD-1")

    ledger = await platform.ledger()
    assert (0, {"reset": 1}) == (ledger["totals"]["accepted"], ledger["counters"]["faults_hit"])


async def test_http_error_answers_503_by_default(platform):
    """kind=http_error without a status answers a bare 503."""
    await platform.add_fault(kind="http_error")

    response = await platform.send(QUERY_INVOICE_RESULT, QUERY, token="x" * 32)

    assert 503 == response.status


async def test_http_error_on_the_token_endpoint_only(platform):
    """operations=["accessToken"] faults the token endpoint and nothing else."""
    token = await platform.token()
    await platform.add_fault(kind="http_error", status=502, operations=["accessToken"])

    token_response = await platform.fetch_token()
    call = await platform.call(QUERY_INVOICE_RESULT, QUERY, token=token)

    assert (502, "E0000") == (token_response.status, call["code"])


async def test_busy_answers_040102_in_each_endpoints_shape(platform):
    """kind=busy: HTTP 200 with code 040102, as `error` on the token endpoint."""
    token = await platform.token()
    await platform.add_fault(kind="busy")

    call = await platform.call(QUERY_INVOICE_RESULT, QUERY, token=token)
    token_answer = await (await platform.fetch_token()).json()

    assert ("040102", "040102") == (call["code"], token_answer["error"])


async def test_quota_answers_070201(platform):
    """kind=quota: HTTP 200 with code 070201, nothing processed."""
    await platform.token()
    await platform.add_fault(kind="quota", operations=[REQUEST_BILLING])

    body = await platform.issue("ORD-1")

    assert "070201" == body["code"]
    assert 0 == (await platform.ledger())["totals"]["accepted"]


async def test_rate_limit_answers_429_with_retry_after(platform):
    """kind=rate_limit: HTTP 429 carrying the configured Retry-After."""
    await platform.token()
    await platform.add_fault(kind="rate_limit", retry_after_s=7)

    response = await platform.send(QUERY_INVOICE_RESULT, QUERY)

    assert (429, "7") == (response.status, response.headers["Retry-After"])


async def test_slow_answers_normally_after_the_delay(platform, clock):
    """kind=slow: nothing comes back until delay_s has passed on the platform's clock."""
    await platform.token()
    await platform.add_fault(kind="slow", delay_s=30)

    call = asyncio.create_task(platform.issue("ORD-1"))
    await eventually(lambda: clock.sleepers == 1)
    assert not call.done()
    clock.advance(30)

    assert "E0000" == (await call)["code"]


async def test_slow_call_is_processed_even_after_the_client_gave_up(platform, clock, sim):
    """A slow call whose client timed out is still processed when the delay ends."""
    await platform.token()
    await platform.add_fault(kind="slow", delay_s=30)

    with pytest.raises(TimeoutError):
        await platform.send(REQUEST_BILLING, platform.order("ORD-1"), timeout=0.1)
    await eventually(lambda: clock.sleepers == 1)
    assert 0 == len(sim.platform.ledger)
    clock.advance(30)

    await eventually(lambda: len(sim.platform.ledger) == 1)


async def test_hang_never_answers(platform, sim):
    """kind=hang: the client times out and nothing is processed."""
    await platform.token()
    await platform.add_fault(kind="hang", operations=[REQUEST_BILLING])

    with pytest.raises(TimeoutError):
        await platform.send(REQUEST_BILLING, platform.order("ORD-1"), timeout=0.1)

    assert 0 == len(sim.platform.ledger)


async def test_answer_lost_processes_then_resets(platform):
    """kind=answer_lost: the invoice is issued but the client only sees a reset; its retry
    is then a duplicate (E9106) — the situation the gateway's reconciliation must handle."""
    await platform.token()
    await platform.add_fault(kind="answer_lost", operations=[REQUEST_BILLING], count=1)

    with pytest.raises(aiohttp.ClientConnectionError):
        await platform.issue("ORD-1")
    retry = await platform.issue("ORD-1")

    assert 1 == (await platform.ledger())["totals"]["accepted"]
    assert "E9106" == retry["code"]


async def test_answer_lost_in_hang_mode_processes_then_never_answers(platform, sim):
    """answer_lost with mode=hang: processed, then the client times out."""
    await platform.token()
    await platform.add_fault(kind="answer_lost", mode="hang")

    with pytest.raises(TimeoutError):
        await platform.send(REQUEST_BILLING, platform.order("ORD-1"), timeout=0.1)

    await eventually(lambda: len(sim.platform.ledger) == 1)


async def test_truncate_processes_then_cuts_the_body_short(platform):
    """kind=truncate: the invoice is issued, the answer's body stops before Content-Length."""
    await platform.token()
    await platform.add_fault(kind="truncate", operations=[REQUEST_BILLING])

    response = await platform.send(REQUEST_BILLING, platform.order("ORD-1"))
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()

    assert 1 == (await platform.ledger())["totals"]["accepted"]


async def test_token_expiry_revokes_existing_tokens_until_a_new_one_is_fetched(platform):
    """kind=token_expiry (p=1): old tokens answer 070301; a newly fetched token works."""
    old = await platform.token()
    await platform.add_fault(kind="token_expiry")

    rejected = await platform.call(QUERY_INVOICE_RESULT, QUERY, token=old)
    fresh = await platform.call(QUERY_INVOICE_RESULT, QUERY, token=await platform.new_token())
    _, faults = await platform.control("GET", "/_sim/faults")
    counters = (await platform.ledger())["counters"]

    assert ("070301", "E0000") == (rejected["code"], fresh["code"])
    assert (1, 0, 1) == (
        counters["revoked_token"],
        counters["bad_token"],
        counters["faults_hit"]["token_expiry"],
    )
    assert [] == faults["faults"]


async def test_token_expiry_after_a_delay_revokes_when_its_window_opens(platform, clock):
    """A token_expiry rule with after_s revokes tokens only once that time has come."""
    token = await platform.token()
    await platform.add_fault(kind="token_expiry", after_s=10)

    before = await platform.call(QUERY_INVOICE_RESULT, QUERY, token=token)
    clock.advance(10)
    after = await platform.call(QUERY_INVOICE_RESULT, QUERY, token=token)

    assert ("E0000", "070301") == (before["code"], after["code"])


async def test_token_expiry_with_probability_rejects_that_fraction(platform):
    """token_expiry with p<1 answers 070301 on about that fraction; the token stays valid."""
    token = await platform.token()
    await platform.add_fault(kind="token_expiry", probability=0.5)

    codes = [
        (await platform.call(QUERY_INVOICE_RESULT, QUERY, token=token))["code"] for _ in range(100)
    ]
    counters = (await platform.ledger())["counters"]

    assert 30 <= codes.count("070301") <= 70
    assert codes.count("070301") == counters["faults_hit"]["token_expiry"]
    assert 0 == counters["revoked_token"] + counters["bad_token"]


async def test_probability_fires_on_about_that_fraction(platform):
    """probability=0.3 faults roughly 30 % of calls, and hits are counted exactly."""
    token = await platform.token()
    rule_id = await platform.add_fault(kind="busy", probability=0.3)

    codes = [
        (await platform.call(QUERY_INVOICE_RESULT, QUERY, token=token))["code"] for _ in range(200)
    ]
    _, listing = await platform.control("GET", "/_sim/faults")

    assert 30 <= codes.count("040102") <= 90
    assert [(rule_id, codes.count("040102"))] == [
        (rule["id"], rule["hits"]) for rule in listing["faults"]
    ]


async def test_count_ends_a_rule_after_that_many_hits(platform):
    """count=2: two calls are faulted, the third is not, and the rule is gone."""
    token = await platform.token()
    await platform.add_fault(kind="busy", count=2)

    codes = [
        (await platform.call(QUERY_INVOICE_RESULT, QUERY, token=token))["code"] for _ in range(3)
    ]
    _, listing = await platform.control("GET", "/_sim/faults")

    assert ["040102", "040102", "E0000"] == codes
    assert [] == listing["faults"]


async def test_window_opens_after_after_s_and_closes_after_duration_s(platform, clock):
    """after_s=5, duration_s=10: calls are faulted from t=5 until t=15 only."""
    token = await platform.token()
    await platform.add_fault(kind="busy", after_s=5, duration_s=10)

    codes = []
    for step in (0, 4.9, 0.1, 9.8, 0.2):
        clock.advance(step)
        codes.append((await platform.call(QUERY_INVOICE_RESULT, QUERY, token=token))["code"])

    assert ["E0000", "E0000", "040102", "040102", "E0000"] == codes


async def test_operations_limit_a_rule_to_those_methods(platform):
    """A rule for requestBillingNew leaves queries alone."""
    await platform.token()
    await platform.add_fault(kind="busy", operations=[REQUEST_BILLING])

    issue = await platform.issue("ORD-1")
    lookup = await platform.call(QUERY_INVOICE_RESULT, QUERY)

    assert ("040102", "E0000") == (issue["code"], lookup["code"])


async def test_oldest_matching_rule_wins(platform):
    """With two rules matching, the one added first decides the answer."""
    await platform.token()
    await platform.add_fault(kind="quota")
    await platform.add_fault(kind="busy")

    assert "070201" == (await platform.call(QUERY_INVOICE_RESULT, QUERY))["code"]


async def test_refuse_in_process_resets_calls(platform):
    """Without real listeners, refuse still drops every call (connection reset)."""
    await platform.token()
    await platform.add_fault(kind="refuse")

    with pytest.raises(aiohttp.ClientConnectionError):
        await platform.issue("ORD-1")


async def test_rules_are_listed_with_their_state(platform, clock):
    """GET /_sim/faults lists rules with parameters, hits and pending/active state."""
    await platform.add_fault(kind="slow", delay_s=1.5, after_s=60)

    _, listing = await platform.control("GET", "/_sim/faults")

    assert [
        {
            "id": "f1",
            "kind": "slow",
            "operations": None,
            "probability": 1.0,
            "after_s": 60.0,
            "duration_s": None,
            "count": None,
            "delay_s": 1.5,
            "hits": 0,
            "state": "pending",
            "starts_in_s": 60.0,
        }
    ] == listing["faults"]


async def test_rules_can_be_deleted_one_by_one_or_all(platform):
    """DELETE /_sim/faults/{id} removes one (404 if unknown); DELETE /_sim/faults clears."""
    first = await platform.add_fault(kind="busy")
    await platform.add_fault(kind="quota")
    await platform.add_fault(kind="reset")

    one = await platform.control("DELETE", f"/_sim/faults/{first}")
    again = await platform.control("DELETE", f"/_sim/faults/{first}")
    rest = await platform.control("DELETE", "/_sim/faults")
    _, listing = await platform.control("GET", "/_sim/faults")

    assert [(200, {"removed": 1}), 404, (200, {"removed": 2})] == [one, again[0], rest]
    assert [] == listing["faults"]


@pytest.mark.parametrize(
    ("rule", "mentions"),
    [
        ({"kind": "explode"}, "'kind' must be one of"),
        ({"kind": "busy", "delay_s": 1}, "unknown field(s) delay_s"),
        ({"kind": "busy", "probability": 0}, "'probability'"),
        ({"kind": "busy", "probability": 1.5}, "'probability'"),
        ({"kind": "busy", "count": 0}, "'count'"),
        ({"kind": "busy", "after_s": -1}, "'after_s'"),
        ({"kind": "busy", "duration_s": 0}, "'duration_s'"),
        ({"kind": "busy", "operations": []}, "'operations'"),
        ({"kind": "http_error", "status": 200}, "'status'"),
        ({"kind": "answer_lost", "mode": "explode"}, "'mode'"),
        ({"kind": "refuse", "operations": [REQUEST_BILLING]}, "refuse closes"),
        ({"kind": "refuse", "count": 3}, "refuse closes"),
        ({"kind": "token_expiry", "count": 3}, "token_expiry with probability 1"),
        ({"kind": "token_expiry", "probability": 0.5, "operations": ["accessToken"]}, "token"),
        (["busy"], "JSON object"),
    ],
)
async def test_invalid_rules_are_rejected_with_400(platform, rule, mentions):
    """A bad rule is answered 400 with a message naming the problem, and nothing is added."""
    status, body = await platform.control("POST", "/_sim/faults", rule)
    _, listing = await platform.control("GET", "/_sim/faults")

    assert 400 == status
    assert mentions in body["error"]
    assert [] == listing["faults"]


async def test_rule_that_is_not_json_is_rejected_with_400(platform):
    """A body that is not JSON is a 400, not a crash."""
    response = await platform.client.post("/_sim/faults", data=b"kind=busy")

    assert (400, "the body must be JSON") == (response.status, (await response.json())["error"])
