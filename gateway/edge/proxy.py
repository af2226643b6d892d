"""The client-facing request path, top to bottom:

    authenticate tenant → read body → classify
        → submit: intake (idempotency → durable admission → pipeline → record or queue)
        → read / passthrough: resilience pipeline
    → respond

Every response carries `X-Request-Id` and `X-Gateway-Outcome`, and produces one access log line;
with a backup endpoint configured, answers to reads and passthroughs also carry
`X-Gateway-Upstream` (`primary` or `backup`: which endpoint answered).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Protocol
from urllib.parse import parse_qsl

import structlog
from aiohttp import web

from gateway.config import TenantConfig, TenantLimitsConfig
from gateway.edge.intake import Intake, check_idempotency_key
from gateway.edge.limits import TenantLimited, TenantLimiter
from gateway.edge.outcomes import OUTCOME, Exchange, respond
from gateway.edge.platform_answers import PlatformAnswers, translate
from gateway.edge.problem import client_error, problem_response, store_unavailable
from gateway.edge.sdk import SDK_HEADERS, SDK_QUERY_PARAMS, SdkGate, SdkRefused, is_sdk_call
from gateway.edge.tenants import API_KEY_HEADER, TenantDirectory
from gateway.errors import (
    BadRequest,
    ClientRequestError,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    StoreError,
)
from gateway.headers import REQUEST_ID, add_forwarded, end_to_end, request_id
from gateway.operations import Classifier, JsonLimits, Operation, OperationKind, RequestBody
from gateway.outbox.store import OutboxStore
from gateway.resilience.pipeline import ResiliencePipeline
from gateway.upstream.client import upstream_path
from gateway.upstream.models import UpstreamRequest

access_log = structlog.get_logger("gateway.access")


class ExchangeObserver(Protocol):
    """Told about every client request (metrics); the edge does not know who listens."""

    def request_started(self) -> None:
        """A client request is being served."""
        ...

    def request_done(
        self,
        *,
        operation: str,
        tenant: str | None,
        outcome: str,
        status: int,
        error_class: str | None,
        seconds: float,
    ) -> None:
        """The request got its response: `status`, after `seconds`, as `outcome`."""
        ...


class Proxy:
    def __init__(
        self,
        *,
        tenants: TenantDirectory,
        classifier: Classifier,
        pipeline: ResiliencePipeline,
        intake: Intake,
        store: OutboxStore,
        max_body_bytes: int,
        observer: ExchangeObserver,
        json_limits: JsonLimits | None = None,
        read_timeout: float | None = None,
        limits: TenantLimiter | None = None,
        sdk: SdkGate | None = None,
        answers: PlatformAnswers | None = None,
    ) -> None:
        self._observer = observer
        #: Vendor-SDK clients (edge/sdk.py) and the platform-shaped answers they get.
        self._sdk = sdk
        self._answers = answers
        self._tenants = tenants
        self._limits = limits
        self._classifier = classifier
        self._pipeline = pipeline
        self._intake = intake
        self._store = store
        self._max_body_bytes = max_body_bytes
        self._json_limits = json_limits or JsonLimits()
        #: Seconds the whole body may take to arrive (`limits.read_timeout`); None: no limit.
        self._read_timeout = read_timeout

    def reconfigure_tenants(
        self, tenants: Sequence[TenantConfig], default_limits: TenantLimitsConfig | None
    ) -> None:
        """Take up the tenants, keys and limits of a reloaded configuration (SIGHUP)."""
        if self._sdk is not None:  # first: it refuses two tenants with one SDK app key
            self._sdk.reconfigure(tenants)
        self._tenants.reconfigure(tenants)
        if self._limits is not None:
            self._limits.reconfigure(tenants, default_limits)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        exchange = Exchange(request_id=request_id(request.headers))
        # Every line logged while serving this request carries its id (and, once known, its
        # tenant), whoever logs it. Bound and reset by token: structlog's `bound_contextvars`
        # first copies every context variable, a cost on each request.
        tokens = structlog.contextvars.bind_contextvars(request_id=exchange.request_id, tenant=None)
        try:
            return await self._handle(request, exchange)
        finally:
            structlog.contextvars.reset_contextvars(**tokens)

    async def _handle(self, request: web.Request, exchange: Exchange) -> web.StreamResponse:
        started = time.perf_counter()
        self._observer.request_started()
        try:
            response = await self._serve(request, exchange)
        except ClientRequestError as exc:
            exchange.error_class = exc.slug
            response = client_error(exc, exchange.request_id, headers=_retry_after(exc))
        except StoreError as exc:
            exchange.error_class = "store-unavailable"
            response = store_unavailable(
                exc,
                exchange.request_id,
                title="Cannot store the submission",
                consequence="so it was not accepted and nothing was sent. Retry later with the "
                "same key",
            )
        except Exception:  # the safety net: a bug must still answer with a problem+json
            access_log.exception("unexpected error while serving a request")
            exchange.error_class = "internal-error"
            response = problem_response(
                status=500,
                slug="internal-error",
                title="Internal error in the gateway",
                detail=(
                    "the gateway failed unexpectedly while serving this request; a submission "
                    "that was acknowledged is safe in the outbox. Quote the request id to the "
                    "operator"
                ),
                request_id=exchange.request_id,
            )
        if exchange.platform_answers and isinstance(response, web.Response):
            response = translate(response)  # a problem raised above, in the platform's words
        response.headers[REQUEST_ID] = exchange.request_id
        response.headers[OUTCOME] = exchange.outcome
        elapsed = time.perf_counter() - started
        self._observer.request_done(
            operation=exchange.operation.name,
            tenant=exchange.tenant,
            outcome=exchange.outcome,
            status=response.status,
            error_class=exchange.error_class,
            seconds=elapsed,
        )
        access_log.info(
            "request",
            request_id=exchange.request_id,
            tenant=exchange.tenant,
            operation=exchange.operation.name,
            kind=exchange.operation.kind.value,
            method=request.method,
            path=request.path,
            status=response.status,
            upstream_status=exchange.upstream_status,
            outcome=exchange.outcome,
            error_class=exchange.error_class,
            attempts=exchange.attempts,
            endpoint=exchange.endpoint,
            latency_ms=round(elapsed * 1000, 3),
        )
        return response

    async def _serve(self, request: web.Request, exchange: Exchange) -> web.StreamResponse:
        sdk_body: bytes | None = None
        if (
            self._sdk is not None
            and self._sdk.enabled
            and is_sdk_call(request.headers, request.query)
        ):
            # Signed as the vendor's SDK signs: the signature covers the body, read first.
            sdk_body = await self._read_body(request)
            try:
                exchange.tenant = await self._sdk.authenticate(
                    path=request.path, query=request.query, headers=request.headers, body=sdk_body
                )
            except SdkRefused as refused:
                exchange.error_class = "sdk-refused"
                return refused.answer()
            exchange.platform_answers = self._sdk.platform_answers(exchange.tenant)
        else:
            exchange.tenant = await self._tenants.authenticate(request.headers.get(API_KEY_HEADER))
        # Every line logged for this request from here on names its tenant.
        structlog.contextvars.bind_contextvars(tenant=exchange.tenant)
        if self._limits is None:
            return await self._forward(request, exchange, sdk_body)
        release = self._limits.acquire(exchange.tenant)
        try:
            return await self._forward(request, exchange, sdk_body)
        finally:
            release()

    async def _forward(
        self, request: web.Request, exchange: Exchange, sdk_body: bytes | None = None
    ) -> web.StreamResponse:
        """`sdk_body`: an SDK call's body, read (and verified) already."""
        path, query = upstream_path(request.raw_path)
        # Rules name headers in lower case; aiohttp's headers are looked up case-insensitively.
        incoming = request.headers
        for name in self._classifier.header_names:
            if len(incoming.getall(name, ())) > 1:
                # Which one would the platform act on? Classified by one (a read) and issued by
                # the other, a submission would bypass the outbox.
                raise BadRequest(
                    f"the request carries the {name!r} header more than once; send it once"
                )
        # The head first: an unknown operation (unmatched: reject), or a bad Idempotency-Key on
        # what may be a submission, is refused before the body is read or parsed.
        candidates = self._classifier.candidates(request.method, path, incoming)
        if any(rule.operation.kind is OperationKind.SUBMIT for rule in candidates):
            check_idempotency_key(request.headers)
        sdk = sdk_body is not None
        raw = sdk_body if sdk_body is not None else await self._read_body(request)
        body = RequestBody(raw, self._json_limits)
        exchange.operation = operation = self._classifier.classify(
            request.method, path, incoming, body, candidates
        )
        if operation.kind is OperationKind.SUBMIT:
            self._validate_submission(operation, body)

        # An SDK client's signature and gateway token stop here (the gateway signs afresh).
        headers = end_to_end(request.headers, drop=(API_KEY_HEADER, *(SDK_HEADERS if sdk else ())))
        headers[REQUEST_ID] = exchange.request_id
        add_forwarded(headers, client_ip=request.remote, host=request.host, proto=request.scheme)
        pairs = parse_qsl(query, keep_blank_values=True)
        outgoing = UpstreamRequest(
            method=request.method,
            path=path,
            query=tuple((k, v) for k, v in pairs if not (sdk and k in SDK_QUERY_PARAMS)),
            headers=headers,
            body=body.raw,
            operation=operation.name,
            tenant=exchange.tenant,
        )
        answers = self._answers if exchange.platform_answers else None
        if operation.kind is OperationKind.SUBMIT:
            submitted = await self._intake.submit(request, outgoing, operation, body, exchange)
            return submitted if answers is None else answers.submitted(submitted, exchange)
        if answers is not None and answers.follows(operation):
            return await answers.lookup(outgoing, operation, body, exchange)
        outcome = await self._pipeline.execute(outgoing, operation)
        return respond(outcome, operation, exchange)

    async def submission_status(self, request: web.Request) -> web.Response:
        """`GET /gateway/v1/submissions/{id}`: a tenant sees only its own submissions."""
        exchange = Exchange(request_id=request_id(request.headers))
        tenant: str | None = None
        try:
            tenant = await self._tenants.authenticate(request.headers.get(API_KEY_HEADER))
            submission = await self._store.get(request.match_info["id"])
            if submission is None or submission.tenant != tenant:
                raise NotFound(
                    "no submission with this id for your tenant; check the id from the 202 answer"
                )
            response = web.json_response(submission.public_view())
        except StoreError as exc:
            response = store_unavailable(
                exc, exchange.request_id, title="Cannot read the store", consequence="retry later"
            )
        except ClientRequestError as exc:
            response = client_error(exc, exchange.request_id)
        response.headers[REQUEST_ID] = exchange.request_id
        access_log.info(
            "request",
            request_id=exchange.request_id,
            tenant=tenant,
            operation="submission-status",
            method=request.method,
            path=request.path,
            status=response.status,
        )
        return response

    async def _read_body(self, request: web.Request) -> bytes:
        try:
            async with asyncio.timeout(self._read_timeout):
                return await self._read_body_unbounded(request)
        except TimeoutError:
            raise RequestTimeout(
                f"the request body did not arrive within {self._read_timeout:g} s "
                "(limits.read_timeout); nothing was sent"
            ) from None

    async def _read_body_unbounded(self, request: web.Request) -> bytes:
        limit = self._max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise PayloadTooLarge(
                f"the body is {request.content_length} bytes; this gateway accepts at most {limit}"
            )
        chunks: list[bytes] = []
        size = 0
        while chunk := await request.content.readany():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(
                    f"the body exceeds {limit} bytes, the most this gateway accepts"
                )
            chunks.append(chunk)
        return b"".join(chunks)

    @staticmethod
    def _validate_submission(operation: Operation, body: RequestBody) -> None:
        document = body.json()
        if operation.business_key is not None:
            key = operation.business_key.resolve(document)
            if not isinstance(key, str | int) or isinstance(key, bool) or key == "":
                raise BadRequest(
                    f"{operation.name} needs a business key at {operation.business_key.text} "
                    "(a non-empty string or number); nothing was sent"
                )


def _retry_after(exc: ClientRequestError) -> dict[str, str] | None:
    if isinstance(exc, TenantLimited):
        return {"Retry-After": str(exc.retry_after)}
    return None
