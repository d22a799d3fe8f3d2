"""Logging: structlog for our events, stdlib (uvicorn, the domain) through the same processors.

JSON lines in production, pretty console output in development. Tokens never reach a log
line: a processor masks ``token=...`` in every message (uvicorn logs WebSocket paths).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, Final

import structlog
from structlog.typing import Processor

_TOKEN_IN_TEXT: Final = re.compile(r"(token=)[^&\s\"']+", re.IGNORECASE)
_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _redact_tokens(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    event = event_dict.get("event")
    if isinstance(event, str) and "token=" in event.lower():
        event_dict["event"] = _TOKEN_IN_TEXT.sub(r"\1[redacted]", event)
    event_dict.pop("color_message", None)  # uvicorn's ANSI copy of the message
    for key in ("token", "authorization"):
        if key in event_dict:
            event_dict[key] = "[redacted]"
    return event_dict


def configure_logging(level: str, log_format: str) -> None:
    levelno = _LEVELS[level]
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact_tokens,
    ]
    renderer: Processor = (
        structlog.dev.ConsoleRenderer()
        if log_format == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(levelno),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                *shared,
                structlog.stdlib.add_logger_name,
                structlog.stdlib.ExtraAdder(),
            ],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(levelno)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True
    # httpx logs every backend call at info; the gateway logs what matters about them itself.
    logging.getLogger("httpx").setLevel(max(levelno, logging.WARNING))
    logging.getLogger("httpcore").setLevel(max(levelno, logging.WARNING))
    # The edge logs every request once, with its request id; uvicorn's access log would repeat it.
    logging.getLogger("uvicorn.access").disabled = True
