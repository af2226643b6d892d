"""The simulated platform's front door: the token endpoint, the checks every call passes, and the
points where fault rules step in.

A call to `/open/v1/services` is checked in this order, each failure answered as HTTP 200 with
`{"code", "describe"}` and counted in `Counters`:

    1. appkey is the configured one                                  else 070603
    2. timestamp is within 300 s of the platform's clock             else 070601
    3. senid (32 characters) and nonce (5 to 10 digits) well formed,
       and X-Nuonuo-Sign matches `gateway.upstream.auth.signature.sign`       else 070601
    4. accessToken issued here, not expired, not revoked             else 070301
    5. userTax is the configured seller tax number                   else 070303
       (for a merchant's token: that merchant's tax number           else 070401)
    6. the `method` header names a known operation                   else 070501
       ... that is not switched off (`disabled_apis`)                else 070302
    7. the body is a JSON object                                     else 0201

A stale timestamp is a signature failure to the caller, as on the platform (whose advice for
070601 is to check the server clock); the counters still tell the two apart.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import random
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from gateway.clock import Clock
from gateway.tools.simulator import codes, wire
from gateway.tools.simulator.counters import Counters
from gateway.tools.simulator.faults import TOKEN_OPERATION, FaultBook, FaultKind, FaultRule, Stage
from gateway.tools.simulator.faults import parse_fault_rule as _parse_fault_rule
from gateway.tools.simulator.ledger import Ledger
from gateway.tools.simulator.operations import OPERATIONS, InvalidRequest, OperationContext, answer
from gateway.tools.simulator.tokens import TokenState, TokenStore, user_id_of
from gateway.tools.simulator.wire import Reply
from gateway.upstream.auth.signature import sign

DEMO_APP_KEY: Final = "SD00000001"
DEMO_APP_SECRET: Final = "SDDEMO0SECRET001"  # noqa: S105  # a public demo value, like the SDKs'
DEMO_USER_TAX: Final = "91110108123456789H"

TOKEN_PATH: Final = "/accessToken"  # noqa: S105  # a URL path, not a secret
SERVICES_PATH: Final = "/open/v1/services"

# What the vendor's SDKs send: a 32-character id (UUIDs without dashes, MD5 hex, upper or lower
# case) and a random positive integer of 5 to 10 digits (8 in its documentation).
_SENID_LENGTH: Final = 32
_NONCE = re.compile(r"[0-9]{5,10}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
#: The `calls` counter key for a call without a `method` header.
_NO_METHOD: Final = "(none)"


@dataclass(frozen=True, slots=True)
class PlatformSettings:
    """How the simulated platform behaves (the CLI flags of `invoice-gateway simulate`)."""

    app_key: str = DEMO_APP_KEY
    app_secret: str = DEMO_APP_SECRET
    #: The one seller (销方) this platform serves; calls must carry it as `userTax`.
    user_tax: str = DEMO_USER_TAX
    token_ttl_s: float = 86_400.0
    #: Tokens `/accessToken` may issue in total (None: unlimited); further calls get 070306.
    token_quota: int | None = None
    #: Merchants who authorized the application as a service provider's: each authorization
    #: code (usable once) and the merchant's tax number.
    isv_codes: Mapping[str, str] = field(default_factory=dict)
    #: Merchants (tax numbers) who withdrew their authorization: their refresh tokens are refused.
    isv_withdrawn: frozenset[str] = frozenset()
    #: Seconds from acceptance (status 20) to issued or failed (22).
    issue_delay_s: float = 1.0
    #: Seconds an issued invoice is being signed (status 21) before it is done (2) or its
    #: signing failed (24).
    sign_delay_s: float = 0.0
    #: Answer E9106 to a reused orderNo. Off, the platform issues the order again (a double).
    dedup: bool = True
    #: queryInvoiceResult lists an invoice only this long after it was accepted.
    lookup_lag_s: float = 0.0
    #: Shares of accepted blue invoices that end 22 (issuance failed) and 24 (signing failed),
    #: besides those whose buyer tax number fails its check (always 22).
    fail_issuance_rate: float = 0.0
    fail_signing_rate: float = 0.0
    #: Operations answered 070302 (API not enabled for this application).
    disabled_apis: frozenset[str] = frozenset()
    #: How far a request's `timestamp` may be from the platform's clock.
    timestamp_window_s: float = 300.0


class Platform:
    """The simulated invoice platform: state, checks and operations, behind two aiohttp routes."""

    def __init__(self, settings: PlatformSettings, *, clock: Clock, rng: random.Random) -> None:
        #: The settings of the moment: `PATCH /_sim/settings` replaces them, a reset restores
        #: those it started with.
        self.settings = settings
        self.started_with = settings
        self.rng = rng
        self.clock = clock
        self.ledger = Ledger()
        self.tokens = TokenStore()
        self.faults = FaultBook(rng)
        self.counters = Counters()
        #: Set when the server shuts down, so hanging and slow calls stop waiting.
        self.closing = asyncio.Event()

    def routes(self, *, own_token_host: bool = False) -> list[web.RouteDef]:
        """The API's routes. With `own_token_host` the token endpoint is served on a listener of
        its own (`token_routes`), as the real platform serves it from a host of its own, and a
        token request to the API is answered 404 and counted."""
        token = self.handle_misdirected_token if own_token_host else self.handle_token
        return [web.post(TOKEN_PATH, token), web.post(SERVICES_PATH, self.handle_services)]

    def token_routes(self) -> list[web.RouteDef]:
        """The token host's one route."""
        return [web.post(TOKEN_PATH, self.handle_token)]

    def reset(self) -> None:
        """Forget everything: ledger, tokens, fault rules, counters, changed settings."""
        self.settings = self.started_with
        self.ledger.clear()
        self.tokens.clear()
        self.faults.clear()
        self.counters.clear()

    def add_fault(self, spec: object) -> FaultRule:
        """Validate and install a fault rule (raises `FaultSpecError`)."""
        now = self.clock.monotonic()
        rule = _parse_fault_rule(spec, now=now)
        self.faults.add(rule)
        self._revoke_due_tokens(now)
        return rule

    async def pause(self, seconds: float) -> bool:
        """Wait on the platform's clock; False if the server started shutting down first."""
        if self.closing.is_set():
            return False
        sleeper = asyncio.ensure_future(self.clock.sleep(seconds))
        closer = asyncio.ensure_future(self.closing.wait())
        try:
            await asyncio.wait({sleeper, closer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            closer.cancel()
        return not self.closing.is_set()

    async def handle_token(self, request: web.Request) -> web.StreamResponse:
        """`POST /accessToken` (form fields client_id, client_secret, grant_type; for a
        merchant also code, taxNum, redirect_uri, or refresh_token)."""
        self.counters.token_calls += 1
        return await self._serve(request, TOKEN_OPERATION, self._issue_token)

    async def handle_misdirected_token(self, request: web.Request) -> web.StreamResponse:
        """`POST /accessToken` on the API listener while tokens have a host of their own."""
        self.counters.token_calls_to_api_host += 1
        return web.json_response(
            {"error": "not found: tokens are served by the token host"}, status=404
        )

    async def handle_services(self, request: web.Request) -> web.StreamResponse:
        """`POST /open/v1/services`: every operation, chosen by the `method` header."""
        return await self._serve(request, request.headers.get("method", ""), self._call_service)

    async def _serve(
        self,
        request: web.Request,
        operation: str,
        process: Callable[[web.Request], Awaitable[Reply]],
    ) -> web.StreamResponse:
        """One call, with fault rules applied around the processing."""
        now = self.clock.monotonic()
        self.counters.calls[operation or _NO_METHOD] += 1
        self._revoke_due_tokens(now)
        if self.faults.refusing(now):
            # Only reachable on a connection opened before the listener closed, or in-process.
            self.counters.faults_hit[FaultKind.REFUSE] += 1
            return wire.reset(request)

        before = self.faults.pick(Stage.BEFORE, operation, now)
        if before is not None:
            self.counters.faults_hit[before.kind] += 1
            if before.kind is FaultKind.SLOW:
                # Processed after the delay even if the client gave up meanwhile: the platform
                # acting after the caller's timeout is exactly what a gateway must survive.
                if not await self.pause(before.number("delay_s")):
                    return wire.reset(request)
            else:
                return await self._answer_instead(request, operation, before)

        reply = await process(request)

        after = self.faults.pick(Stage.AFTER, operation, self.clock.monotonic())
        if after is None:
            return wire.send(reply)
        self.counters.faults_hit[after.kind] += 1
        if after.kind is FaultKind.TRUNCATE:
            return await wire.send_truncated(request, reply)
        if after.text("mode") == "hang":
            await self.pause(after.number("hang_s"))
        return wire.reset(request)

    async def _answer_instead(
        self, request: web.Request, operation: str, rule: FaultRule
    ) -> web.StreamResponse:
        match rule.kind:
            case FaultKind.RESET:
                return wire.reset(request)
            case FaultKind.HANG:
                await self.pause(rule.number("hang_s"))
                return wire.reset(request)
            case FaultKind.HTTP_ERROR:
                return wire.send(Reply.http_error(int(rule.number("status"))))
            case FaultKind.RATE_LIMIT:
                retry_after = {"Retry-After": str(int(rule.number("retry_after_s")))}
                return wire.send(Reply.http_error(429, retry_after))
            case FaultKind.BUSY:
                return wire.send(self._refusal(operation, codes.BUSY))
            case FaultKind.QUOTA:
                return wire.send(self._refusal(operation, codes.QUOTA_EXCEEDED))
            case _:  # pragma: no cover - Stage.BEFORE holds only the kinds above
                raise AssertionError(f"{rule.kind} is not answered before processing")

    @staticmethod
    def _refusal(operation: str, code: str) -> Reply:
        """A coded refusal in the shape of the endpoint that was called (the token endpoint's
        quota has a code of its own)."""
        if operation == TOKEN_OPERATION:
            code = codes.TOKEN_QUOTA_EXHAUSTED if code == codes.QUOTA_EXCEEDED else code
            return Reply.json({"error": code, "error_description": codes.DESCRIPTIONS[code]})
        return answer(code)

    def _revoke_due_tokens(self, now: float) -> None:
        revocations = self.faults.take_due_revocations(now)
        if revocations:
            self.tokens.revoke_all()
            self.counters.faults_hit[FaultKind.TOKEN_EXPIRY] += revocations

    async def _issue_token(self, request: web.Request) -> Reply:
        form = await request.post()
        settings, now = self.settings, self.clock.monotonic()
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        grant_type = form.get("grant_type")
        if grant_type == "refresh_token":
            return self._refresh_merchant_token(form, now)
        if grant_type not in ("client_credentials", "authorization_code"):
            self.counters.bad_credentials += 1
            return _token_error(codes.WRONG_APP_TYPE, "grant_type不支持")
        if not isinstance(client_id, str) or client_id != settings.app_key:
            self.counters.bad_credentials += 1
            return _token_error(codes.UNKNOWN_CLIENT_ID)
        if not isinstance(client_secret, str) or not hmac.compare_digest(
            client_secret.encode(), settings.app_secret.encode()
        ):
            self.counters.bad_credentials += 1
            return _token_error(codes.WRONG_CLIENT_SECRET)
        if grant_type == "authorization_code":
            return self._merchant_token_from_code(form, now)
        if settings.token_quota is not None and self.tokens.issued >= settings.token_quota:
            return _token_error(codes.TOKEN_QUOTA_EXHAUSTED)
        token = self.tokens.issue(now, settings.token_ttl_s)
        self.counters.tokens_issued += 1
        return Reply.json({"access_token": token.value, "expires_in": self._expires_in()})

    def _expires_in(self) -> str:
        ttl = self.settings.token_ttl_s
        return str(int(ttl)) if ttl == int(ttl) else str(ttl)

    def _merchant_token_from_code(self, form: Mapping[str, object], now: float) -> Reply:
        """grant_type=authorization_code: a code from `isv_codes`, once, with its merchant's
        tax number as taxNum and a redirect_uri."""
        code, tax_num = form.get("code"), form.get("taxNum")
        known = self.settings.isv_codes.get(code) if isinstance(code, str) else None
        if (
            known is None
            or known != tax_num
            or not form.get("redirect_uri")
            or not self.tokens.spend_code(str(code))
        ):
            self.counters.merchant_grants_refused += 1
            return _token_error(codes.AUTHORIZATION_CODE_REFUSED)
        self.counters.codes_exchanged += 1
        return self._merchant_token(known, now)

    def _refresh_merchant_token(self, form: Mapping[str, object], now: float) -> Reply:
        """grant_type=refresh_token: client_id is the merchant's user id (from the last token
        answer), client_secret the application's; each refresh token is good once."""
        client_secret = form.get("client_secret")
        if not isinstance(client_secret, str) or not hmac.compare_digest(
            client_secret.encode(), self.settings.app_secret.encode()
        ):
            self.counters.bad_credentials += 1
            return _token_error(codes.WRONG_CLIENT_SECRET)
        refresh, user_id = form.get("refresh_token"), form.get("client_id")
        merchant = (
            self.tokens.take_refresh_token(refresh, user_id)
            if isinstance(refresh, str) and isinstance(user_id, str)
            else None
        )
        if merchant is None or merchant in self.settings.isv_withdrawn:
            self.counters.merchant_grants_refused += 1
            return _token_error(codes.REFRESH_TOKEN_REFUSED)
        self.counters.refreshes += 1
        return self._merchant_token(merchant, now)

    def _merchant_token(self, merchant: str, now: float) -> Reply:
        settings = self.settings
        if settings.token_quota is not None and self.tokens.issued >= settings.token_quota:
            return _token_error(codes.TOKEN_QUOTA_EXHAUSTED)
        token = self.tokens.issue(now, settings.token_ttl_s, merchant=merchant)
        self.counters.tokens_issued += 1
        return Reply.json(
            {
                "access_token": token.value,
                "refresh_token": self.tokens.new_refresh_token(merchant),
                "expires_in": self._expires_in(),
                "userId": user_id_of(merchant),
            }
        )

    async def _call_service(self, request: web.Request) -> Reply:
        body = await request.read()
        # Everything below is synchronous: a call is processed whole or not at all.
        now, wall = self.clock.monotonic(), self.clock.wall()
        settings, counters = self.settings, self.counters
        query, headers = request.query, request.headers

        app_key = query.get("appkey", "")
        if app_key != settings.app_key:
            counters.unknown_app_key += 1
            return answer(codes.UNKNOWN_APP_KEY, f"appkey[{app_key}]不存在")

        timestamp = query.get("timestamp", "")
        if (
            _TIMESTAMP.fullmatch(timestamp) is None
            or abs(wall - int(timestamp)) > settings.timestamp_window_s
        ):
            counters.stale_timestamp += 1
            return answer(codes.SIGNATURE_CHECK_FAILED, codes.STALE_TIMESTAMP_DESCRIBE)

        senid, nonce = query.get("senid", ""), query.get("nonce", "")
        if len(senid) != _SENID_LENGTH or _NONCE.fullmatch(nonce) is None:
            counters.rejected_signature += 1
            return answer(
                codes.SIGNATURE_CHECK_FAILED, "签名校验失败：senid须为32位、nonce须为5至10位数字"
            )
        expected = sign(
            app_secret=settings.app_secret,
            app_key=app_key,
            senid=senid,
            nonce=nonce,
            timestamp=timestamp,
            body=body,
        )
        if not hmac.compare_digest(expected.encode(), headers.get("X-Nuonuo-Sign", "").encode()):
            counters.rejected_signature += 1
            return answer(codes.SIGNATURE_CHECK_FAILED)

        method = headers.get("method", "")
        match self.tokens.check(headers.get("accessToken", ""), now):
            case TokenState.REVOKED:
                counters.revoked_token += 1
                return answer(codes.TOKEN_INVALID)
            case TokenState.UNKNOWN | TokenState.EXPIRED:
                counters.bad_token += 1
                return answer(codes.TOKEN_INVALID)
            case TokenState.VALID:
                pass
        injected = self.faults.pick(Stage.TOKEN, method, now)
        if injected is not None:
            counters.faults_hit[injected.kind] += 1
            return answer(codes.TOKEN_INVALID)

        merchant = self.tokens.merchant_of(headers.get("accessToken", ""))
        seller = merchant or settings.user_tax
        if headers.get("userTax", "") != seller:
            if merchant is not None:
                counters.caller_mismatch += 1
                return answer(codes.CALLER_MISMATCH)
            counters.wrong_user_tax += 1
            return answer(codes.USER_TAX_MISMATCH)

        operation = OPERATIONS.get(method)
        if operation is None:
            counters.unknown_method += 1
            return answer(codes.UNKNOWN_METHOD, f"method[{method}]不存在")
        if method in settings.disabled_apis:
            counters.api_not_enabled += 1
            return answer(codes.API_NOT_ENABLED, f"应用未开通API[{method}]")

        context = OperationContext(
            ledger=self.ledger,
            seller_tax_num=seller,
            now=now,
            wall=wall,
            issue_delay_s=settings.issue_delay_s,
            dedup=settings.dedup,
            sign_delay_s=settings.sign_delay_s,
            lookup_lag_s=settings.lookup_lag_s,
            fail_issuance_rate=settings.fail_issuance_rate,
            fail_signing_rate=settings.fail_signing_rate,
            rng=self.rng,
        )
        try:
            payload = _json_object(body)
            return operation(context, payload)
        except InvalidRequest as exc:
            counters.invalid_request += 1
            return answer(
                codes.INVALID_REQUEST, f"{codes.DESCRIPTIONS[codes.INVALID_REQUEST]}：{exc}"
            )


def _token_error(code: str, description: str | None = None) -> Reply:
    return Reply.json({"error": code, "error_description": description or codes.DESCRIPTIONS[code]})


def _json_object(body: bytes) -> Mapping[str, Any]:
    try:
        payload = json.loads(body)
    except ValueError:
        raise InvalidRequest("请求体不是合法的JSON") from None
    if not isinstance(payload, dict):
        raise InvalidRequest("请求体必须是JSON对象")
    return payload
