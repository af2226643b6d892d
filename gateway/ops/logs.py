"""structlog set-up: JSON lines by default, console rendering on a terminal.

Every line, from structlog or from the standard library (aiohttp, asyncio), passes through the
same chain, whose last step before rendering is `MaskSensitive`: personal data never reaches the
log, whichever key or sentence it hides in. Values bound with `structlog.contextvars` (the
request id while a request is served, the submission while it is delivered) are on every line.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Literal

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from gateway.sensitive import TextMasker


class MaskSensitive:
    """structlog processor: masks personal data anywhere in the event dict.

    Fields named like personal data (`buyer_tax_num`, `phone`, `email`, …) are masked whole;
    every other text — the message, nested documents, formatted tracebacks — is masked by shape
    (tax numbers, phone numbers, e-mail addresses) and for each of the `known` values, the
    configured secrets and the seller's tax number. Runs after `format_exc_info`, so tracebacks
    are covered too.
    """

    def __init__(self, known: Iterable[str] = ()) -> None:
        self._masker = TextMasker(known)

    def __call__(self, _logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
        masked: EventDict = self._masker.document(event_dict)
        return masked


#: structlog's method names and their levels (`exception` logs at error).
_METHOD_LEVELS: dict[str, int] = {
    **{name.lower(): number for name, number in logging.getLevelNamesMapping().items()},
    "exception": logging.ERROR,
    "warn": logging.WARNING,
    "msg": logging.INFO,
}


class LevelGate:
    """structlog processor, the first one: drops an event below the level in force, which
    `set_log_level` changes while the gateway runs (SIGHUP). structlog's own level filter is
    fixed once a logger is first used; this one is not."""

    def __init__(self) -> None:
        self.minimum = logging.INFO

    def __call__(self, _logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        if _METHOD_LEVELS.get(method, logging.INFO) < self.minimum:
            raise structlog.DropEvent
        return event_dict


_GATE = LevelGate()


def set_log_level(level: str) -> None:
    """The level in force from now on (`debug`, `info`, `warning`, `error`)."""
    _GATE.minimum = logging.getLevelNamesMapping()[level.upper()]


def _json_line(event_dict: EventDict, **_: object) -> str:
    """One log line as JSON: orjson, several times faster than `json.dumps` on the access log's
    path. UTF-8 as it is (the lines were `\\u`-escaped ASCII before); anything it cannot
    serialise natively is written as its `str`."""
    return orjson.dumps(event_dict, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def configure_logging(
    fmt: Literal["auto", "json", "console"] = "auto",
    level: str = "info",
    *,
    sensitive_values: Iterable[str] = (),
) -> None:
    """Route structlog (and stdlib logging) to stderr in the chosen format, masked.

    `sensitive_values` are masked wherever they appear, whatever their shape: pass the resolved
    secrets of the configuration (`GatewayConfig.secrets()`), the seller's tax number among them.
    """
    console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: Processor = (
        structlog.dev.ConsoleRenderer()
        if console
        else structlog.processors.JSONRenderer(serializer=_json_line)
    )
    masked: list[Processor] = [
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        MaskSensitive(sensitive_values),
    ]
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    set_log_level(level)
    structlog.configure(
        processors=[_GATE, *shared, *masked, renderer],
        # Every level reaches the gate, so that a reload can lower the level too.
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                *shared,
                structlog.stdlib.add_logger_name,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *masked,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
