"""Answers in the platform's terms, for SDK clients of tenants with `answers: platform`
(docs/sdk-clients.md#what-the-gateway-answers): a vendor SDK reads `{"code", "describe",
"result"}` at HTTP 200, never a 202 or a problem document.

    submission queued (202)          → E0000, result.invoiceSerialNum = the gateway serial
    the lookup (queryInvoiceResult)  → the gateway's own entries for what it has not delivered:
        asked by a gateway serial, or by the order number of a submission not at the platform
            queued / being delivered / unknown    status 20 (issuing)
            refused by the platform (failed)      status 22, failCause = its verdict
            dead / discarded                      status 22, failCause = why
        delivered: the platform's record, looked up by its real serial, with
            `gatewaySerialNo` added (both serials)
    a problem the gateway raised     → 040102 busy (5xx, 408, 409, 429), E9106 (the same order
                                       number with another body), 070501 (unknown operation),
                                       0201 (any other refusal of the request)
    the platform's own answers       → as they came

The gateway serial is `GW` and the submission id's 32 hex digits in capitals (`sub_0193…` ↔
`GW0193…`): decoded without a table, and never a number the platform gives (its are digits).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from typing import Any, Final

from aiohttp import web

from gateway.config import IssuanceConfig, OperationConfig
from gateway.edge.outcomes import Exchange, respond
from gateway.edge.problem import CONTENT_TYPE as PROBLEM_CONTENT_TYPE
from gateway.edge.sdk import BUSY
from gateway.jsonpointer import MISSING, JsonPointer
from gateway.operations import Operation, RequestBody
from gateway.outbox.store import OutboxStore
from gateway.outbox.submissions import Submission, SubmissionQuery, SubmissionState
from gateway.resilience.pipeline import ResiliencePipeline
from gateway.upstream.models import UpstreamRequest

SUCCESS: Final = "E0000"
INVALID_REQUEST: Final = "0201"
UNKNOWN_METHOD: Final = "070501"
DUPLICATE_ORDER: Final = "E9106"
#: The lookup body's field of order numbers (the platform's name for it).
ORDER_NOS: Final = "orderNos"
#: The field of a lookup entry that carries the gateway serial.
GATEWAY_SERIAL: Final = "gatewaySerialNo"
SERIAL_PREFIX: Final = "GW"
_SERIAL = re.compile(r"^GW([0-9A-F]{32})$")
_ID = re.compile(r"^sub_([0-9a-f]{32})$")
#: Submissions read per page when a lookup names an order number.
_PAGE: Final = 50
_PAGES: Final = 4

ISSUING: Final = "20"
ISSUE_FAILED: Final = "22"
ISSUED: Final = "2"
_STATUS_MESSAGES: Final = {
    ISSUING: "开票中",
    ISSUE_FAILED: "开票失败",
    ISSUED: "开票完成（最终状态）",
}
#: Never at the platform: the gateway gave up (or on-call did).
_ABANDONED: Final = {
    SubmissionState.DEAD: "网关多次投递未成功，已停止投递（dead），请联系网关运维",
    SubmissionState.DISCARDED: "网关运维已放弃该开票请求（discarded），不会开具",
}


def gateway_serial(submission_id: str) -> str | None:
    """The serial number the gateway gives a queued submission, or None for an id of another
    shape."""
    found = _ID.match(submission_id)
    return f"{SERIAL_PREFIX}{found.group(1).upper()}" if found else None


def submission_id_of(serial: str) -> str | None:
    """The submission id a gateway serial stands for; None for any other serial."""
    found = _SERIAL.match(serial)
    return f"sub_{found.group(1).lower()}" if found else None


def platform_answer(
    code: str, describe: str, result: object = None, *, headers: Any = None
) -> web.Response:
    payload: dict[str, Any] = {"code": code, "describe": describe}
    if result is not None:
        payload["result"] = result
    return web.Response(
        status=200,
        body=json.dumps(payload, ensure_ascii=False).encode(),
        content_type="application/json",
        headers=headers,
    )


def translate(response: web.Response) -> web.Response:
    """A problem the gateway raised, as the platform would say it; anything else unchanged."""
    if response.content_type != PROBLEM_CONTENT_TYPE:
        return response
    status = response.status
    try:
        title = str(json.loads(bytes(response.body))["title"])  # type: ignore[arg-type]
    except (ValueError, KeyError, TypeError):
        title = str(status)
    if status >= 500 or status in (408, 409, 429):
        code, words = BUSY, "系统繁忙，请稍后重试"
    elif status == 422:
        code, words = DUPLICATE_ORDER, "订单编号已存在，且与本次请求内容不同"
    elif status == 404:
        code, words = UNKNOWN_METHOD, "API不存在"
    else:
        code, words = INVALID_REQUEST, "必填参数为空或格式错误"
    kept = {k: v for k, v in response.headers.items() if k.lower() == "retry-after"}
    return platform_answer(code, f"{words}（网关：{title}）", headers=kept)


class PlatformAnswers:
    """Builds the platform-shaped answers; reads the outbox, never changes it."""

    def __init__(
        self,
        operations: Sequence[OperationConfig],
        *,
        store: OutboxStore,
        pipeline: ResiliencePipeline,
    ) -> None:
        self._store = store
        self._pipeline = pipeline
        #: Each lookup operation following submissions, and how (the first one's settings).
        self._lookups: dict[str, IssuanceConfig] = {}
        #: Submit operations by the lookup that follows them, and where their answer's serial is.
        self._followed: dict[str, dict[str, JsonPointer | None]] = {}
        for op in operations:
            if op.kind != "submit" or op.issuance is None:
                continue
            self._lookups.setdefault(op.issuance.lookup, op.issuance)
            self._followed.setdefault(op.issuance.lookup, {})[op.name] = op.issuance.serial_pointer

    def follows(self, operation: Operation) -> bool:
        """Whether `operation` is the lookup the gateway answers for its own serials."""
        return operation.name in self._lookups

    def submitted(self, response: web.Response, exchange: Exchange) -> web.Response:
        """A submission's answer: queued → E0000 with the gateway serial."""
        serial = gateway_serial(exchange.submission_id or "")
        if response.status == 202 and serial is not None:
            return platform_answer(
                SUCCESS,
                "开票提交成功（网关已受理，平台恢复后送达；请按流水号查询结果）",
                {"invoiceSerialNum": serial},
                headers={k: v for k, v in response.headers.items() if k.lower() == "location"},
            )
        return translate(response)

    async def lookup(
        self,
        outgoing: UpstreamRequest,
        operation: Operation,
        body: RequestBody,
        exchange: Exchange,
    ) -> web.Response:
        """The lookup, with the gateway's serials and undelivered orders answered by the
        gateway and the rest by the platform (one call, or none when nothing is left)."""
        document = body.json_or_missing()
        issuance = self._lookups[operation.name]
        by = issuance.by
        if not isinstance(document, dict):
            return await self._ask(outgoing, operation, exchange)
        own: list[dict[str, Any]] = []
        #: Real serial → gateway serial, for the platform's entries of delivered submissions.
        aliases: dict[str, str] = {}
        serials = document.get(by)
        orders = document.get(ORDER_NOS)
        if isinstance(serials, list) and serials:
            kept: list[Any] = []
            for serial in serials:
                found = await self._by_serial(serial, exchange.tenant, operation)
                if found is None:
                    kept.append(serial)  # not the gateway's: the platform's to answer
                    continue
                submission, real = found
                if real is not None:
                    kept.append(real)
                    aliases[real] = serial
                elif submission is not None:
                    own.append(self._entry(submission, serial))
            rest: dict[str, Any] = {**document, by: kept}
            ask = bool(kept)
        elif isinstance(orders, list) and orders:
            kept = []
            for order in orders:
                submissions = await self._by_order(order, exchange.tenant, operation)
                delivered = [(s, r) for s in submissions if (r := self._real_serial(s))]
                if delivered or not submissions:
                    kept.append(order)
                    for submission, real in delivered:
                        if submission.acknowledged:  # the client was given a gateway serial
                            aliases[real] = _serial_of(submission)
                else:
                    newest = submissions[0]
                    own.append(self._entry(newest, _serial_of(newest)))
            rest = {**document, ORDER_NOS: kept}
            ask = bool(kept)
        else:
            return await self._ask(outgoing, operation, exchange)
        if not own and not aliases:
            return await self._ask(outgoing, operation, exchange)
        if not ask:
            exchange.outcome = "answered"
            return platform_answer(SUCCESS, "查询成功", own)
        raw = json.dumps(rest, ensure_ascii=False, separators=(",", ":")).encode()
        response = await self._ask(dataclasses.replace(outgoing, body=raw), operation, exchange)
        return self._merged(response, issuance, own, aliases)

    async def _ask(
        self, outgoing: UpstreamRequest, operation: Operation, exchange: Exchange
    ) -> web.Response:
        return translate(
            respond(await self._pipeline.execute(outgoing, operation), operation, exchange)
        )

    @staticmethod
    def _merged(
        response: web.Response,
        issuance: IssuanceConfig,
        own: list[dict[str, Any]],
        aliases: dict[str, str],
    ) -> web.Response:
        """The platform's answer with the gateway's entries added and its serials shown."""
        try:
            answer = json.loads(bytes(response.body))  # type: ignore[arg-type]
        except (ValueError, TypeError):
            return response
        entries = issuance.entries_pointer.resolve(answer)
        if not isinstance(answer, dict) or answer.get("code") != SUCCESS:
            return response
        if not isinstance(entries, list):
            entries = []
        for entry in entries:
            serial = issuance.entry_serial_pointer.resolve(entry)
            if isinstance(entry, dict) and isinstance(serial, str) and serial in aliases:
                entry[GATEWAY_SERIAL] = aliases[serial]
        entries.extend(own)
        answer["result"] = entries
        headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
        return web.Response(
            status=response.status,
            body=json.dumps(answer, ensure_ascii=False).encode(),
            headers=headers,
        )

    async def _by_serial(
        self, serial: object, tenant: str | None, operation: Operation
    ) -> tuple[Submission | None, str | None] | None:
        """None: not a gateway serial. Else the submission (None: not this tenant's or gone)
        and the platform's serial once it is delivered."""
        submission_id = submission_id_of(serial) if isinstance(serial, str) else None
        if submission_id is None:
            return None
        submission = await self._store.get(submission_id)
        if (
            submission is None
            or submission.tenant != tenant
            or submission.operation not in self._followed[operation.name]
        ):
            return None, None
        return submission, self._real_serial(submission)

    async def _by_order(
        self, order: object, tenant: str | None, operation: Operation
    ) -> list[Submission]:
        """`tenant`'s submissions under order number `order` that this lookup follows, newest
        first."""
        if not isinstance(order, str | int) or isinstance(order, bool) or tenant is None:
            return []
        text = str(order)
        found: list[Submission] = []
        cursor: str | None = None
        for _ in range(_PAGES):
            page = await self._store.query(
                SubmissionQuery(tenant=tenant, text=text), limit=_PAGE, cursor=cursor
            )
            found += [
                s
                for s in page.items
                if s.business_key == text and s.operation in self._followed[operation.name]
            ]
            cursor = page.next_cursor
            if cursor is None:
                break
        return found

    def _real_serial(self, submission: Submission) -> str | None:
        """The platform's serial of a submission it accepted, else None."""
        if submission.state not in (SubmissionState.DELIVERED, SubmissionState.ISSUE_FAILED):
            return None
        if submission.issuance is not None and submission.issuance.serial:
            return submission.issuance.serial
        pointer = next(
            (
                p
                for ops in self._followed.values()
                for n, p in ops.items()
                if n == submission.operation
            ),
            None,
        )
        if pointer is not None and submission.response is not None:
            try:
                value = pointer.resolve(json.loads(submission.response.body))
            except ValueError:
                value = MISSING
            if isinstance(value, str) and value:
                return value
        lookup = (submission.result or {}).get("lookup")
        serial = lookup.get("serialNo") if isinstance(lookup, dict) else None
        return serial if isinstance(serial, str) and serial else None

    @staticmethod
    def _entry(submission: Submission, serial: str) -> dict[str, Any]:
        """The gateway's entry for a submission the platform has not (or never will have)."""
        status, cause = ISSUING, ""
        if submission.state is SubmissionState.ISSUED_MANUALLY:
            status = ISSUED
        elif submission.state is SubmissionState.FAILED:
            status, cause = ISSUE_FAILED, _verdict(submission)
        elif submission.state in _ABANDONED:
            status, cause = ISSUE_FAILED, _ABANDONED[submission.state]
        return {
            "serialNo": serial,
            "orderNo": submission.business_key or "",
            "status": status,
            "statusMsg": _STATUS_MESSAGES[status],
            "failCause": cause,
            GATEWAY_SERIAL: serial,
        }


def _serial_of(submission: Submission) -> str:
    return gateway_serial(submission.id) or submission.id


def _verdict(submission: Submission) -> str:
    """The platform's refusal of a submission, as `code describe`."""
    if submission.response is not None:
        try:
            answer = json.loads(submission.response.body)
        except ValueError:
            answer = None
        if isinstance(answer, dict) and answer.get("code"):
            return f"{answer['code']} {answer.get('describe', '')}".strip()
    return submission.last_error or "平台拒绝了该开票请求"
