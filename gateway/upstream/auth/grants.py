"""How the `nuonuo-hmac` scheme asks the token endpoint for a token: the grant a call sends, and
what the grant keeps between calls (docs/design.md#token).

    ClientCredentials    the gateway's own (self-use, 自用型) application: client_id = app key,
                         client_secret, grant_type=client_credentials; nothing to keep
    AuthorizationCode    a merchant of a service-provider (ISV) application: first the
                         merchant's authorization code (client_id = app key, client_secret,
                         code, taxNum, redirect_uri), then refresh_token (client_id = the
                         merchant's user id, client_secret); keeps the refresh token, the user
                         id and which code was spent

A code is single-use: once sent it is never sent again, so after the platform refuses the
refresh token (the merchant's authorization expired or was withdrawn) nothing is asked for until
a new code is configured. That state is a small JSON record the scheme keeps in the token store
beside the token (`dump` / `restore`), so a restart neither spends the code again nor forgets the
refresh token.
"""

from __future__ import annotations

import hashlib
import json
from typing import Final, Protocol

from gateway.upstream.auth.token_guard import (
    CONFIG_ERROR_CODES,
    Hold,
    HoldCause,
    Refusal,
    TokenAnswer,
    TokenCallResult,
)

__all__ = ["AuthorizationCode", "ClientCredentials", "Grant", "fingerprint"]

#: Refusals that are about the application (its secret or type), whatever the grant.
_APPLICATION_CODES: Final = frozenset({"070305", "070307"})


class Grant(Protocol):
    #: The grant's name as status and metrics show it.
    name: str

    @property
    def credentials(self) -> str:
        """A fingerprint of what the calls are made with (never a secret itself)."""
        ...

    def form(self) -> dict[str, str]:
        """The next token call's form fields."""
        ...

    def refusal_is_config_error(self) -> bool:
        """Whether any coded refusal of the next call is a configuration error."""
        ...

    def hold(self, now: float) -> Hold | None:
        """What holds token calls back whatever the guard says (nothing left to send), if
        anything."""
        ...

    def advice(self, refusal: Refusal) -> str:
        """The words of the hold after the platform refused the configuration."""
        ...

    def took(self, answer: TokenAnswer, now: float) -> bool:
        """Learn from the answer (at wall time `now`) to the call `form` made; True when there is
        something new to keep (`dump`)."""
        ...

    def release(self) -> bool:
        """An operator says: try again what was refused. True when something changed."""
        ...

    def dump(self) -> str | None:
        """What to keep in the token store, as JSON; None: nothing."""
        ...

    def restore(self, text: str) -> None:
        """Take up what `dump` wrote; raises ValueError when `text` is not such a record."""
        ...


class ClientCredentials:
    """The gateway's own application: its key and secret are all it sends."""

    name = "client_credentials"

    def __init__(self, *, token_url: str, app_key: str, app_secret: str) -> None:
        self._app_key = app_key
        self._app_secret = app_secret
        self._credentials = fingerprint(token_url, app_key, app_secret)

    @property
    def credentials(self) -> str:
        return self._credentials

    def form(self) -> dict[str, str]:
        return {
            "client_id": self._app_key,
            "client_secret": self._app_secret,
            "grant_type": "client_credentials",
        }

    def refusal_is_config_error(self) -> bool:
        return False

    def hold(self, now: float) -> Hold | None:
        return None

    def advice(self, refusal: Refusal) -> str:
        return application_advice(refusal)

    def took(self, answer: TokenAnswer, now: float) -> bool:
        return False

    def release(self) -> bool:
        return False

    def dump(self) -> str | None:
        return None

    def restore(self, text: str) -> None:
        return None


class AuthorizationCode:
    """A merchant of a service-provider application: its authorization code once, then its
    refresh token. `key` is where the tenant sits in the config (`tenants[0]`), for messages."""

    name = "authorization_code"

    def __init__(
        self,
        *,
        tenant: str,
        key: str,
        token_url: str,
        app_key: str,
        app_secret: str,
        user_tax: str,
        code: str | None,
        redirect_uri: str,
        user_id: str | None,
    ) -> None:
        self._tenant = tenant
        self._key = key
        self._app_key = app_key
        self._app_secret = app_secret
        self._user_tax = user_tax
        self._code = code
        self._code_print = fingerprint(code) if code is not None else None
        self._redirect_uri = redirect_uri
        self._configured_user_id = user_id
        self._credentials = fingerprint(
            token_url, app_key, app_secret, user_tax, self._code_print or ""
        )
        #: What is kept: the refresh token and user id of the last token, the code spent, and
        #: whether the platform refused the refresh token (and when).
        self._refresh_token: str | None = None
        self._user_id: str | None = None
        self._code_spent: str | None = None
        self._refused_at: float | None = None
        #: What the call in flight sends: "code" or "refresh".
        self._sending: str | None = None

    @property
    def credentials(self) -> str:
        return self._credentials

    @property
    def user_id(self) -> str | None:
        """The merchant's user id (from the token answer, else the config)."""
        return self._user_id or self._configured_user_id

    def _refresh_usable(self) -> bool:
        return self._refresh_token is not None and self._refused_at is None

    def _code_usable(self) -> bool:
        return self._code_print is not None and self._code_print != self._code_spent

    def form(self) -> dict[str, str]:
        if self._refresh_usable() and self.user_id is not None:
            assert self._refresh_token is not None
            self._sending = "refresh"
            return {
                "grant_type": "refresh_token",
                "refresh_token": self._refresh_token,
                "client_id": self.user_id,
                "client_secret": self._app_secret,
            }
        if not self._code_usable():  # pragma: no cover - `hold` says so before any call
            raise AssertionError("form() while the grant holds")
        assert self._code is not None
        self._sending = "code"
        return {
            "grant_type": "authorization_code",
            "client_id": self._app_key,
            "client_secret": self._app_secret,
            "code": self._code,
            "taxNum": self._user_tax,
            "redirect_uri": self._redirect_uri,
        }

    def refusal_is_config_error(self) -> bool:
        return True

    def hold(self, now: float) -> Hold | None:
        if self._refresh_usable():
            if self.user_id is not None:
                return None
            return self._held(
                now,
                f"the platform named no user id (userId) for tenant {self._tenant!r}, and its "
                "token cannot be renewed without one: set "
                f"{self._key}.upstream.user_id to the merchant's user id and restart the gateway",
            )
        if self._code_usable():
            return None
        if self._code_print is None and self._code_spent is None and self._refused_at is None:
            return self._held(
                now,
                f"tenant {self._tenant!r} has no access token and no authorization code: the "
                "merchant must authorize the application; set "
                f"{self._key}.upstream.code to the code the platform gave and restart the gateway",
            )
        return self._held(now, self._authorize_again("its authorization is used up"))

    def _held(self, now: float, reason: str) -> Hold:
        since = self._refused_at if self._refused_at is not None else now
        return Hold(HoldCause.CONFIG_ERROR, since=since, until=None, reason=reason)

    def _authorize_again(self, why: str) -> str:
        return (
            f"no token is asked for tenant {self._tenant!r}: {why}, and an authorization code is "
            "used once only. The merchant must authorize the application again; set "
            f"{self._key}.upstream.code to the new code and restart the gateway"
        )

    def advice(self, refusal: Refusal) -> str:
        if self._refused_at is not None:
            return self._authorize_again(
                f"the platform refused its refresh token ({refusal.detail}): the merchant's "
                "authorization expired or was withdrawn"
            )
        if refusal.code in CONFIG_ERROR_CODES:
            return application_advice(refusal)
        return self._authorize_again(
            f"the platform refused its authorization code ({refusal.detail})"
        )

    def took(self, answer: TokenAnswer, now: float) -> bool:
        sending, self._sending = self._sending, None
        if answer.result is TokenCallResult.SUCCESS:
            if sending == "code":
                self._code_spent = self._code_print
            self._refresh_token = answer.refresh_token or self._refresh_token
            self._user_id = answer.user_id or self._user_id
            self._refused_at = None
            return True
        if answer.result is not TokenCallResult.CONFIG_ERROR:
            return False  # unreachable, 5xx, the quota: the same may be sent again later
        if sending == "code":
            if answer.code in CONFIG_ERROR_CODES:
                return False  # the application's key, secret or type: the code was not taken
            self._code_spent = self._code_print
        else:
            if answer.code in _APPLICATION_CODES:
                return False  # the application's secret or type, not the merchant's refresh
            # 070304 here: client_id is the merchant's user id, which the platform no longer
            # knows for this application.
            self._refused_at = now
        return True

    def release(self) -> bool:
        if self._refused_at is None:
            return False
        self._refused_at = None
        return True

    def dump(self) -> str | None:
        return json.dumps(
            {
                "refresh_token": self._refresh_token,
                "user_id": self._user_id,
                "code_spent": self._code_spent,
                "refused_at": self._refused_at,
            },
            separators=(",", ":"),
        )

    def restore(self, text: str) -> None:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        refused_at = data.get("refused_at")
        self._refresh_token = _text(data.get("refresh_token"))
        self._user_id = _text(data.get("user_id"))
        self._code_spent = _text(data.get("code_spent"))
        self._refused_at = float(refused_at) if refused_at is not None else None


def application_advice(refusal: Refusal) -> str:
    """The hold's words after the platform refused the application's own credentials."""
    fix = CONFIG_ERROR_CODES.get(refusal.code, "upstream.auth")
    return (
        f"the token endpoint refused the gateway's credentials ({refusal.detail}); no token is "
        f"asked for until the configuration changes. Fix {fix} and restart the gateway (or, once "
        "fixed on the platform, run `invoice-gateway token refresh`)"
    )


def fingerprint(*parts: str) -> str:
    """Tells configurations apart without keeping a secret: a truncated SHA-256."""
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _text(value: object) -> str | None:
    return str(value) if value else None
