"""Sensitive fields: the one definition of what personal and banking data is, and how it is masked.

Every place that shows request content uses this module (SECURITY.md, "What is masked"):

- the logs (`gateway.ops.logs.MaskSensitive`), always;
- the admin API's answers to `viewer` tokens (`gateway.ops.admin.views`), and exports, which are
  masked unless an operator asks for them unmasked with a reason (audited);
- problem details (`gateway.edge.problem`), whose messages may echo what a client sent.

A field is sensitive by its *name*, wherever it sits in a document: `INVOICE_FIELDS` lists the
invoice body's, and `is_sensitive` recognises each of them (and the same names anywhere else: a
platform answer, an audit entry, a log line's key) by the endings in `SENSITIVE_SUFFIXES`:
`buyerTaxNum`, `buyer_phone`, `email`, `salerAddress`, `bankAccount`, `idCardNo`, `userTax`, …
A sensitive value keeps its first and last four characters (enough to tell two apart, too little
to use):

    91110108MA01ABCD2X  →  9111**********CD2X

Free text has no names to go by, so `TextMasker` masks by *shape*: credit codes and legacy
tax numbers (15 to 20 upper-case letters and digits, at least six of them digits — which also
catches bank accounts and ID card numbers), Chinese mobile and landline numbers, and e-mail
addresses.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Any, Final

from gateway.jsonpointer import JsonPointer

#: The invoice body's fields (JSON pointers) that hold personal or banking data. Each is masked
#: by its name (`is_sensitive`), so the same field is masked also where it appears outside the
#: body; tests/unit/test_sensitive.py keeps the two in step.
INVOICE_FIELDS = (
    "/order/buyerTaxNum",
    "/order/buyerPhone",
    "/order/buyerTel",
    "/order/buyerAddress",
    "/order/buyerAccount",
    "/order/buyerEmail",
    "/order/email",
    "/order/salerTaxNum",
    "/order/salerTel",
    "/order/salerAddress",
    "/order/salerAccount",
)

#: Endings of normalised key names (lower case, without `_` and `-`) that hold personal data.
SENSITIVE_SUFFIXES = (
    "taxnum",
    "taxno",
    "taxnumber",
    "taxid",
    "usertax",
    "phone",
    "tel",
    "mobile",
    "email",
    "mail",
    "address",
    "addr",
    "account",
    "accountno",
    "accountnum",
    "bankaccount",
    "cardno",
    "cardnum",
    "idno",
    "idnum",
    "idnumber",
    "idcard",
    "idcardno",
    "identitynumber",
    "identityno",
    "passportno",
)

_NOT_KEY_CHARS = re.compile(r"[_\-\s]")
KNOWN_MIN_LENGTH = 8

#: What personal data looks like inside free text. Every alternative is bounded so that it never
#: bites into a longer token: order numbers such as `SO-3f9a…` and the gateway's own ids
#: (lower-case hex, where a run such as `cd13100037700dd` holds a phone-shaped number) do not
#: match. A phone number beside Chinese text (`电话13812345678`) still does.
_SENSITIVE_TEXT = re.compile(
    r"""
      [A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}   # e-mail
    | (?<![0-9A-Za-z])(?=(?:[A-Z]*[0-9]){6})[0-9A-Z]{15,20}(?![0-9A-Za-z])  # tax no., account
    | (?<![0-9A-Za-z])(?:\+?86[\s\-]?)?1[3-9][0-9]{9}(?![0-9A-Za-z])         # mobile
    | (?<![0-9\-])0[1-9][0-9]{1,2}-[0-9]{7,8}(?![0-9])                      # landline
    """,
    re.VERBOSE,
)


@functools.lru_cache(maxsize=4096)
def is_sensitive(key: str) -> bool:
    """Whether a field with this name holds personal or banking data (cached: the same few
    hundred names come back on every log line and document)."""
    name = _NOT_KEY_CHARS.sub("", key).lower()
    return name.endswith(SENSITIVE_SUFFIXES)


def is_sensitive_pointer(pointer: str) -> bool:
    """Whether a JSON pointer into a document names a sensitive field, or something inside one."""
    try:
        tokens = JsonPointer(pointer).text.split("/")[1:]
    except ValueError:
        return False
    return any(is_sensitive(token) for token in tokens)


def mask_value(value: Any) -> Any:
    """A sensitive value, masked: strings keep 4 characters at each end (2 when short)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, dict):
        return {key: mask_value(inner) for key, inner in value.items()}
    if isinstance(value, list):
        return [mask_value(inner) for inner in value]
    text = str(value)
    keep = 4 if len(text) >= 12 else 2 if len(text) >= 6 else 0
    if keep == 0:
        return "*" * len(text)
    return text[:keep] + "*" * (len(text) - 2 * keep) + text[-keep:]


def mask(document: Any) -> Any:
    """A copy of `document` with the value of every sensitive field masked, at any depth."""
    if isinstance(document, dict):
        return {
            key: mask_value(value) if is_sensitive(str(key)) else mask(value)
            for key, value in document.items()
        }
    if isinstance(document, list):
        return [mask(item) for item in document]
    return document


#: Values that hold no text to mask (exact types: a subclass may `str` to anything).
_PLAIN: Final = frozenset({int, float, bool, type(None)})
#: Texts up to this long are masked through a cache (`TextMasker`).
_CACHED_TEXT_LENGTH: Final = 128


class TextMasker:
    """Masks personal data inside free text: by shape (see the module docstring), and every
    occurrence of `known` values — configured secrets and the seller's own tax number, which
    must not show even when they would not match a shape."""

    def __init__(self, known: Iterable[str] = ()) -> None:
        # Longest first, so a value containing a shorter one is replaced whole. Values shorter
        # than KNOWN_MIN_LENGTH are ignored: masking every "demo" would blind the log, and a
        # secret that short is no secret.
        values = sorted(
            {value for value in known if len(value) >= KNOWN_MIN_LENGTH}, key=len, reverse=True
        )
        self._known = re.compile("|".join(re.escape(value) for value in values)) if values else None
        # Short texts repeat (a log line's operation, path, outcome, tenant): each is masked
        # once. Unique ones (request ids) pass through the cache and age out of it.
        self._short = functools.lru_cache(maxsize=4096)(self._mask)

    def __call__(self, text: str) -> str:
        if len(text) <= _CACHED_TEXT_LENGTH:
            return self._short(text)
        return self._mask(text)

    def _mask(self, text: str) -> str:
        if self._known is not None:
            text = self._known.sub(_masked_match, text)
        return _SENSITIVE_TEXT.sub(_masked_match, text)

    def document(self, value: Any) -> Any:
        """`value` with sensitive fields masked by name and any other text masked by shape, at
        any depth; other objects are rendered as text first (their `str` may hold anything)."""
        if isinstance(value, str):
            return self(value)
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, dict):
            masked: dict[Any, Any] = {}
            for key, inner in value.items():
                if is_sensitive(str(key)):
                    masked[key] = mask_value(inner)
                elif type(inner) in _PLAIN:  # a log line's fields, mostly: no call for them
                    masked[key] = inner
                elif type(inner) is str:
                    masked[key] = self(inner)
                else:
                    masked[key] = self.document(inner)
            return masked
        if isinstance(value, list | tuple | set | frozenset):
            return [self.document(inner) for inner in value]
        if isinstance(value, bytes | bytearray):
            return self(bytes(value).decode(errors="replace"))
        return self(str(value))


def _masked_match(match: re.Match[str]) -> str:
    return str(mask_value(match.group(0)))


#: Masks free text by shape alone: for messages that may echo what a client sent.
ECHO_MASKER = TextMasker()
