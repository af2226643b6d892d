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


async def test_wrong_secret_is_answered_070305(platform):
    """A wrong client_secret gets the token error shape with the vendor's 070305, no token."""
    response = await platform.fetch_token(client_secret="wrong")
    body = await response.json()

    assert 200 == response.status
    assert "070305" == body["error"]
    assert "access_token" not in body


async def test_unknown_client_id_is_answered_070304(platform):
    """A client_id the platform does not know gets the vendor's 070304."""
    body = await (await platform.fetch_token(client_id="SD99999999")).json()

    assert "070304" == body["error"]


async def test_wrong_grant_type_is_answered_070307(platform):
    """A grant_type the platform does not know is the vendor's 070307."""
    body = await (await platform.fetch_token(grant_type="password")).json()

    assert "070307" == body["error"]


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
    """With token_quota=2 the third token call is answered the vendor's quota code 070306."""
    answers = [await (await platform.fetch_token()).json() for _ in range(3)]

    assert [True, True] == ["access_token" in answer for answer in answers[:2]]
    assert "070306" == answers[2]["error"]


async def test_a_quota_fault_on_the_token_endpoint_is_answered_070306(platform):
    """kind=quota on accessToken answers the token endpoint's own quota code, in its shape."""
    await platform.add_fault(kind="quota", operations=["accessToken"])
    body = await (await platform.fetch_token()).json()

    assert ("070306", False) == (body["error"], "access_token" in body)


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
    """A nonce that is not digits is rejected as a signature problem."""
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


@pytest.mark.parametrize(
    ("nonce", "expected"),
    [
        ("10000", "E0000"),
        ("1000000000", "E0000"),
        ("00000042", "E0000"),
        ("9999", "070601"),
        ("10000000000", "070601"),
    ],
)
async def test_nonce_must_have_5_to_10_digits(platform, clock, nonce, expected):
    """The vendor's SDKs send 5 to 10 digits (PHP rand(10000, 1000000000)); 4 or 11 are refused."""
    body = await platform.call(QUERY_INVOICE_RESULT, QUERY, nonce=nonce)

    assert expected == body["code"]


@pytest.mark.parametrize(
    ("senid", "expected"),
    [
        ("0f" * 16, "E0000"),
        ("0F" * 16, "E0000"),
        ("A1b2" * 8, "E0000"),
        ("0f" * 15, "070601"),
        ("0f" * 16 + "0", "070601"),
    ],
)
async def test_senid_must_have_32_characters(platform, senid, expected):
    """UUID hex in either case, or any other 32 characters, is a senid; 30 or 33 are not."""
    body = await platform.call(QUERY_INVOICE_RESULT, QUERY, senid=senid)

    assert expected == body["code"]


async def test_timestamp_older_than_300_s_is_answered_070601(platform, clock):
    """A timestamp 301 s behind is a signature failure (070601), counted as stale; 300 s is fine."""
    stale = await platform.call(QUERY_INVOICE_RESULT, QUERY, timestamp=str(int(clock.wall()) - 301))
    edge = await platform.call(QUERY_INVOICE_RESULT, QUERY, timestamp=str(int(clock.wall()) - 300))
    counters = (await platform.ledger())["counters"]

    assert ("070601", "E0000") == (stale["code"], edge["code"])
    assert (1, 0) == (counters["stale_timestamp"], counters["rejected_signature"])


async def test_timestamp_in_the_future_is_stale_too(platform, clock):
    """The window is symmetric: 301 s ahead is rejected."""
    body = await platform.call(QUERY_INVOICE_RESULT, QUERY, timestamp=str(int(clock.wall()) + 301))

    assert "070601" == body["code"]


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


async def test_unknown_method_is_answered_070501(platform):
    """A method the platform does not offer is answered 070501 (no such API) and counted."""
    body = await platform.call("nuonuo.OpeMplatform.noSuchThing", QUERY)
    counters = (await platform.ledger())["counters"]

    assert "070501" == body["code"]
    assert 1 == counters["unknown_method"]


@pytest.mark.parametrize(
    "settings", [{"disabled_apis": frozenset({QUERY_INVOICE_RESULT})}], indirect=True
)
async def test_disabled_api_is_answered_070302(platform):
    """An operation switched off for the application is answered 070302 and counted."""
    body = await platform.call(QUERY_INVOICE_RESULT, QUERY)
    counters = (await platform.ledger())["counters"]

    assert ("070302", 1) == (body["code"], counters["api_not_enabled"])


async def test_checks_run_in_the_documented_order(platform, clock):
    """A call wrong in every way is answered for the first check: the timestamp (after appkey),
    counted as stale and nothing else."""
    body = await platform.call(
        "no.such.method",
        b"not json",
        token="0" * 32,
        app_secret="wrong",
        user_tax="x",
        timestamp=str(int(clock.wall()) - 1000),
    )
    counters = (await platform.ledger())["counters"]

    assert ("070601", 1) == (body["code"], counters["stale_timestamp"])
    assert (0, 0, 0) == (
        counters["rejected_signature"],
        counters["bad_token"],
        counters["unknown_method"],
    )


async def test_calls_are_counted_per_operation(platform):
    """calls counts every request by method header, and the token endpoint as accessToken."""
    await platform.call(QUERY_INVOICE_RESULT, QUERY)
    await platform.call(QUERY_INVOICE_RESULT, QUERY)
    counters = (await platform.ledger())["counters"]

    assert {"accessToken": 1, QUERY_INVOICE_RESULT: 2} == counters["calls"]
