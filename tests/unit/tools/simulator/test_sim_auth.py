"""The token endpoint and the checks every platform call passes."""

from __future__ import annotations

import dataclasses

import pytest

from gateway.tools.simulator import QUERY_INVOICE_RESULT
from gateway.tools.simulator.testing import signed_call

QUERY = {"orderNos": ["nothing-here"]}


async def test_token_is_issued_for_the_configured_credentials(platform):
    """client_credentials with the right id and secret yield a 32-hex token and its lifetime."""
    response = await platform.fetch_token()
    body = await response.json()

    assert 200 == response.status
    assert 32 == len(body["access_token"])
    int(body["access_token"], 16)
    assert "86400" == body["expires_in"]


async def test_wrong_secret_is_answered_070304(platform):
    """A wrong client_secret gets the token error shape with 070304, and no token."""
    response = await platform.fetch_token(client_secret="wrong")
    body = await response.json()

    assert 200 == response.status
    assert "070304" == body["error"]
    assert "access_token" not in body


async def test_wrong_grant_type_is_answered_070304(platform):
    """Only grant_type=client_credentials is accepted."""
    body = await (await platform.fetch_token(grant_type="password")).json()

    assert "070304" == body["error"]


async def test_every_token_call_is_counted(platform):
    """token_calls counts successful and failed calls; tokens_issued only the successful ones."""
    await platform.fetch_token()
    await platform.fetch_token(client_secret="wrong")
    counters = (await platform.ledger())["counters"]

    assert (2, 1, 1) == (
        counters["token_calls"],
        counters["tokens_issued"],
        counters["bad_credentials"],
    )


@pytest.mark.parametrize("settings", [{"token_quota": 2}], indirect=True)
async def test_token_quota_refuses_calls_beyond_it(platform):
    """With token_quota=2 the third token call is answered 070305."""
    answers = [await (await platform.fetch_token()).json() for _ in range(3)]

    assert [True, True] == ["access_token" in answer for answer in answers[:2]]
    assert "070305" == answers[2]["error"]


async def test_signed_call_with_valid_token_succeeds(platform):
    """A correctly signed call with a fresh token reaches the operation."""
    body = await platform.call(QUERY_INVOICE_RESULT, QUERY)

    assert "E0000" == body["code"]


async def test_wrong_signature_is_answered_070601_and_counted(platform):
    """A signature made with another secret is rejected with 070601 and counted."""
    body = await platform.call(QUERY_INVOICE_RESULT, QUERY, app_secret="not-the-secret")
    counters = (await platform.ledger())["counters"]

    assert "070601" == body["code"]
    assert 1 == counters["rejected_signature"]


async def test_body_changed_after_signing_is_rejected(platform, clock):
    """The signature covers the raw body: altering it after signing is a mismatch."""
    call = signed_call(
        QUERY_INVOICE_RESULT,
        QUERY,
        token=await platform.token(),
        wall=clock.wall(),
        settings=platform.settings,
    )
    response = await platform.client.post(
        "/open/v1/services", params=call.params, headers=call.headers, data=call.body + b" "
    )

    assert "070601" == (await response.json())["code"]


async def test_malformed_nonce_is_a_signature_rejection(platform, clock):
    """A nonce that is not 8 digits is rejected as a signature problem."""
    call = signed_call(
        QUERY_INVOICE_RESULT,
        QUERY,
        token=await platform.token(),
        wall=clock.wall(),
        settings=platform.settings,
    )
    params = {**call.params, "nonce": "12ab"}
    response = await platform.client.post(
        "/open/v1/services", params=params, headers=call.headers, data=call.body
    )

    assert "070601" == (await response.json())["code"]


async def test_timestamp_older_than_300_s_is_answered_070602(platform, clock):
    """A timestamp 301 s behind the platform's clock is stale; 300 s is still accepted."""
    stale = await platform.call(QUERY_INVOICE_RESULT, QUERY, timestamp=str(int(clock.wall()) - 301))
    edge = await platform.call(QUERY_INVOICE_RESULT, QUERY, timestamp=str(int(clock.wall()) - 300))
    counters = (await platform.ledger())["counters"]

    assert ("070602", "E0000") == (stale["code"], edge["code"])
    assert (1, 0) == (counters["stale_timestamp"], counters["rejected_signature"])


async def test_timestamp_in_the_future_is_stale_too(platform, clock):
    """The window is symmetric: 301 s ahead is rejected."""
    body = await platform.call(QUERY_INVOICE_RESULT, QUERY, timestamp=str(int(clock.wall()) + 301))

    assert "070602" == body["code"]


async def test_unknown_appkey_is_answered_070603(platform, clock, settings):
    """A call for another application is refused before anything else is looked at."""
    other = dataclasses.replace(settings, app_key="SD99999999")
    call = signed_call(
        QUERY_INVOICE_RESULT, QUERY, token=await platform.token(), wall=clock.wall(), settings=other
    )
    response = await platform.client.post(
        "/open/v1/services", params=call.params, headers=call.headers, data=call.body
    )

    assert "070603" == (await response.json())["code"]


async def test_unknown_token_is_answered_070301_and_counted(platform):
    """A token the platform never issued is rejected and counted as bad_token."""
    body = await platform.call(QUERY_INVOICE_RESULT, QUERY, token="0" * 32)
    counters = (await platform.ledger())["counters"]

    assert "070301" == body["code"]
    assert 1 == counters["bad_token"]


async def test_token_expires_after_its_lifetime(platform, clock, settings):
    """A token works until token_ttl_s has passed, then answers 070301."""
    token = await platform.token()
    clock.advance(settings.token_ttl_s - 1)
    before = await platform.call(QUERY_INVOICE_RESULT, QUERY, token=token)
    clock.advance(1)
    after = await platform.call(QUERY_INVOICE_RESULT, QUERY, token=token)

    assert ("E0000", "070301") == (before["code"], after["code"])


async def test_older_tokens_stay_valid_after_a_new_one_is_issued(platform):
    """Fetching a second token does not invalidate the first."""
    first = await platform.new_token()
    await platform.new_token()

    assert "E0000" == (await platform.call(QUERY_INVOICE_RESULT, QUERY, token=first))["code"]


async def test_wrong_user_tax_is_answered_070303(platform):
    """userTax must be the configured seller's tax number."""
    body = await platform.call(QUERY_INVOICE_RESULT, QUERY, user_tax="91110108000000002D")

    assert "070303" == body["code"]


async def test_unknown_method_is_answered_070401(platform):
    """A method the platform does not offer is answered 070401 and counted."""
    body = await platform.call("nuonuo.OpeMplatform.noSuchThing", QUERY)
    counters = (await platform.ledger())["counters"]

    assert "070401" == body["code"]
    assert 1 == counters["unknown_method"]


async def test_checks_run_in_the_documented_order(platform, clock):
    """A call wrong in every way is answered for the first check: the timestamp (after appkey)."""
    body = await platform.call(
        "no.such.method",
        b"not json",
        token="0" * 32,
        app_secret="wrong",
        user_tax="x",
        timestamp=str(int(clock.wall()) - 1000),
    )

    assert "070602" == body["code"]


async def test_calls_are_counted_per_operation(platform):
    """calls counts every request by method header, and the token endpoint as accessToken."""
    await platform.call(QUERY_INVOICE_RESULT, QUERY)
    await platform.call(QUERY_INVOICE_RESULT, QUERY)
    counters = (await platform.ledger())["counters"]

    assert {"accessToken": 1, QUERY_INVOICE_RESULT: 2} == counters["calls"]
