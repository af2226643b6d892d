"""Every code the simulator answers with, and the words that come with it.

Codes of the platform (docs/design.md#business-codes) keep their documented meaning. Where the
public Nuonuo documentation names no code for a situation, the simulator uses one of its own,
listed here and in `docs/simulator.md` (which also notes the two, 070401 and 070305, that mean
something else on the real platform).
"""

# ruff: noqa: S105  # names containing "TOKEN" hold platform answer codes, not secrets

from __future__ import annotations

from typing import Final

# -- /open/v1/services: answered as HTTP 200 with {"code", "describe"} -----------------------------

SUCCESS: Final = "E0000"
BUSY: Final = "040102"
QUOTA_EXCEEDED: Final = "070201"
TOKEN_INVALID: Final = "070301"
USER_TAX_MISMATCH: Final = "070303"
UNKNOWN_METHOD: Final = "070401"
SIGNATURE_MISMATCH: Final = "070601"
TIMESTAMP_OUT_OF_WINDOW: Final = "070602"
UNKNOWN_APP_KEY: Final = "070603"
INVALID_REQUEST: Final = "0201"
DUPLICATE_ORDER: Final = "E9106"
RED_ORIGINAL_NOT_FOUND: Final = "E9201"
RED_ORIGINAL_NOT_ISSUED: Final = "E9202"
RED_ALREADY_REVERSED: Final = "E9203"
INSPECTION_NOT_FOUND: Final = "E9301"
INSPECTION_MISMATCH: Final = "E9302"

# -- /accessToken: answered as HTTP 200 with {"error", "error_description"} ------------------------

BAD_CREDENTIALS: Final = "070304"
TOKEN_QUOTA_EXHAUSTED: Final = "070305"

#: Default wording of each code, in the platform's language.
DESCRIPTIONS: Final[dict[str, str]] = {
    SUCCESS: "成功",
    BUSY: "系统繁忙，请稍后重试",
    QUOTA_EXCEEDED: "今日调用次数已超出限额",
    TOKEN_INVALID: "accessToken无效或已过期",
    USER_TAX_MISMATCH: "userTax与授权的销方税号不一致",
    UNKNOWN_METHOD: "method不存在",
    SIGNATURE_MISMATCH: "签名校验失败",
    TIMESTAMP_OUT_OF_WINDOW: "timestamp与平台时间相差超过300秒",
    UNKNOWN_APP_KEY: "appkey不存在",
    INVALID_REQUEST: "必填参数为空或格式错误",
    DUPLICATE_ORDER: "订单编号已存在，请勿重复提交",
    RED_ORIGINAL_NOT_FOUND: "原蓝票订单不存在",
    RED_ORIGINAL_NOT_ISSUED: "原蓝票尚未开具成功，不能红冲",
    RED_ALREADY_REVERSED: "原蓝票已红冲",
    INSPECTION_NOT_FOUND: "查无此票",
    INSPECTION_MISMATCH: "发票信息不一致",
    BAD_CREDENTIALS: "client_id或client_secret错误",
    TOKEN_QUOTA_EXHAUSTED: "获取accessToken次数已超出限额",
}
