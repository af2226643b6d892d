"""Every code the simulator answers with, and the words that come with it.

Two kinds, kept apart below and in the code table of `docs/simulator.md`:

- **The vendor's**: codes in Nuonuo's published tables (docs/design.md#business-codes), used for
  the situation the vendor names: 040102 busy, 070201 daily quota, 070301 token invalid, 070302
  API not enabled, 070501 no such API, 070601 signature check failed (also a stale `timestamp`:
  the vendor's advice for 070601 is to check the server clock) and 0201 bad request. E9106
  (order number already used) is seen in integrations, not in the published table.
- **The simulator's own**: where the vendor publishes no code for a situation the simulator
  models (a wrong `appkey` or `userTax`, red-letter and inspection refusals), it answers a code of
  its own choosing. A gateway must not learn anything about the real platform from these.

The vendor's 070401 (the caller does not match the token) answers a merchant's token sent with
another tax number as `userTax` (a service-provider application's tokens are per merchant). The
token endpoint's codes come last; `docs/simulator.md` says for each whether the vendor uses it for
the same situation.
"""

# ruff: noqa: S105  # names containing "TOKEN" hold platform answer codes, not secrets

from __future__ import annotations

from typing import Final

# -- /open/v1/services: answered as HTTP 200 with {"code", "describe"} -----------------------------

# The vendor's.
SUCCESS: Final = "E0000"
BUSY: Final = "040102"
QUOTA_EXCEEDED: Final = "070201"
TOKEN_INVALID: Final = "070301"
API_NOT_ENABLED: Final = "070302"
UNKNOWN_METHOD: Final = "070501"
SIGNATURE_CHECK_FAILED: Final = "070601"
INVALID_REQUEST: Final = "0201"
DUPLICATE_ORDER: Final = "E9106"
CALLER_MISMATCH: Final = "070401"
# The simulator's own.
USER_TAX_MISMATCH: Final = "070303"
UNKNOWN_APP_KEY: Final = "070603"
RED_ORIGINAL_NOT_FOUND: Final = "E9201"
RED_ORIGINAL_NOT_ISSUED: Final = "E9202"
RED_ALREADY_REVERSED: Final = "E9203"
INSPECTION_NOT_FOUND: Final = "E9301"
INSPECTION_MISMATCH: Final = "E9302"

# -- /accessToken: answered as HTTP 200 with {"error", "error_description"} ------------------------

# The vendor's, each for the situation the vendor names (docs/design.md#token).
UNKNOWN_CLIENT_ID: Final = "070304"
WRONG_CLIENT_SECRET: Final = "070305"
TOKEN_QUOTA_EXHAUSTED: Final = "070306"
#: The vendor's "wrong application type": here, a grant_type the simulator does not know.
WRONG_APP_TYPE: Final = "070307"
# The simulator's own: the vendor's SDKs name no code for a refused merchant authorization.
AUTHORIZATION_CODE_REFUSED: Final = "070308"
REFRESH_TOKEN_REFUSED: Final = "070309"

#: Default wording of each code, in the platform's language.
DESCRIPTIONS: Final[dict[str, str]] = {
    SUCCESS: "成功",
    BUSY: "系统繁忙，请稍后重试",
    QUOTA_EXCEEDED: "今日调用次数已超出限额",
    TOKEN_INVALID: "accessToken无效或已过期",
    API_NOT_ENABLED: "应用未开通该API",
    USER_TAX_MISMATCH: "userTax与授权的销方税号不一致",
    UNKNOWN_METHOD: "API不存在",
    SIGNATURE_CHECK_FAILED: "签名校验失败",
    UNKNOWN_APP_KEY: "appkey不存在",
    INVALID_REQUEST: "必填参数为空或格式错误",
    DUPLICATE_ORDER: "订单编号已存在，请勿重复提交",
    RED_ORIGINAL_NOT_FOUND: "原蓝票订单不存在",
    RED_ORIGINAL_NOT_ISSUED: "原蓝票尚未开具成功，不能红冲",
    RED_ALREADY_REVERSED: "原蓝票已红冲",
    INSPECTION_NOT_FOUND: "查无此票",
    INSPECTION_MISMATCH: "发票信息不一致",
    UNKNOWN_CLIENT_ID: "client_id不存在",
    WRONG_CLIENT_SECRET: "client_secret错误",
    TOKEN_QUOTA_EXHAUSTED: "获取accessToken次数已超出限额",
    WRONG_APP_TYPE: "应用类型错误",
    CALLER_MISMATCH: "调用方与令牌不匹配",
    AUTHORIZATION_CODE_REFUSED: "授权码无效或已使用",
    REFRESH_TOKEN_REFUSED: "refresh_token无效或授权已取消",
}

#: The words of a 070601 for a `timestamp` more than 300 s off the platform's clock.
STALE_TIMESTAMP_DESCRIBE: Final = "签名校验失败：timestamp与平台时间相差超过300秒，请检查服务器时间"
