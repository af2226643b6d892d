"""RFC 6901 JSON Pointers, used to match operations and to read business and ordering keys."""

from __future__ import annotations

from typing import Any, Final


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


#: What `JsonPointer.resolve` returns when the document has no value at the pointer.
MISSING: Final = _Missing()


class JsonPointer:
    """A parsed pointer such as `/order/orderNo`; `""` points at the whole document."""

    __slots__ = ("_tokens", "text")

    def __init__(self, text: str) -> None:
        if text and not text.startswith("/"):
            raise ValueError(f"a JSON pointer starts with '/' (got {text!r})")
        self.text = text
        self._tokens = tuple(
            token.replace("~1", "/").replace("~0", "~") for token in text.split("/")[1:]
        )

    def resolve(self, document: Any) -> Any:
        """The value at this pointer, or `MISSING`."""
        node = document
        for token in self._tokens:
            if isinstance(node, dict):
                if token not in node:
                    return MISSING
                node = node[token]
            elif isinstance(node, list):
                if not token.isdigit() or (len(token) > 1 and token.startswith("0")):
                    return MISSING
                index = int(token)
                if index >= len(node):
                    return MISSING
                node = node[index]
            else:
                return MISSING
        return node

    def __repr__(self) -> str:
        return f"JsonPointer({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JsonPointer) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)
