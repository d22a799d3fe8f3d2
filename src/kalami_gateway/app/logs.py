"""Logging: structlog for our events, stdlib (uvicorn, the domain) through the same processors.

JSON lines in production, pretty console output in development. Secrets never reach a log
line, at any level or format: the last processor before rendering masks ``token=...`` and
``resume=...`` (uvicorn logs WebSocket paths; a resume token carries a session on), the
values of ``Authorization``, ``Proxy-Authorization``, ``Cookie`` and ``Set-Cookie`` (at debug,
uvicorn logs every handshake header) and ``bearer.<token>`` entries (a browser's token, in
``Sec-WebSocket-Protocol``) in every string of the event, tracebacks included.
Tracebacks are rendered as plain text, never with local variables (the console renderer's
default would print a request's headers).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, Final

import structlog
from structlog.typing import Processor

_TOKEN_IN_TEXT: Final = re.compile(r"((?:token|resume)=)[^&\s\"']+", re.IGNORECASE)
# "authorization: Bearer x", "('authorization', 'Bearer x')", "{'cookie': 'a=b'}", "cookie=a=b"
_SECRET_HEADER_IN_TEXT: Final = re.compile(
    r"((?:proxy-)?authorization|set-cookie|cookie)(\s*[:=]\s*|['\"]\s*[:,]\s*b?['\"])[^\r\n'\"]*",
    re.IGNORECASE,
)
# "< Sec-WebSocket-Protocol: kalami.v1, bearer.x", "['kalami.v1', 'bearer.x']"
_BEARER_ENTRY_IN_TEXT: Final = re.compile(r"(bearer\.)[^\s,;'\"\]]+", re.IGNORECASE)
_SECRET_KEYS: Final = frozenset({"token", "resume_token", "authorization", "cookie", "set-cookie"})
_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def redact(text: str) -> str:
    """``text`` with every token and secret header value masked."""
    lower = text.lower()
    if "token=" in lower or "resume=" in lower:
        text = _TOKEN_IN_TEXT.sub(r"\1[redacted]", text)
    if "authorization" in lower or "cookie" in lower:
        text = _SECRET_HEADER_IN_TEXT.sub(r"\1\2[redacted]", text)
    if "bearer." in lower:
        text = _BEARER_ENTRY_IN_TEXT.sub(r"\1[redacted]", text)
    return text


def _redact_secrets(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    event_dict.pop("color_message", None)  # uvicorn's ANSI copy of the message
    for key, value in event_dict.items():
        if key.lower() in _SECRET_KEYS:
            event_dict[key] = "[redacted]"
        elif isinstance(value, str):
            event_dict[key] = redact(value)
    return event_dict


class ClientFaultsAreNotErrors(logging.Filter):
    """uvicorn's websockets-sansio protocol (``WS_ENGINE=uvicorn``) logs a client's invalid
    UTF-8 text message at ERROR, with a traceback: the client's fault, answered with 1007,
    one line per connection that anyone with a token can cause (an alert flood). Dropped:
    ``kalami_websocket_closed_total{reason="protocol_error"}`` counts it, as it counts the
    native engine's, which logs nothing for it either."""

    # Word for word (test_third_party_internals.py holds uvicorn to it).
    FAULTS = frozenset({"Invalid UTF-8 sequence received from client."})

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg in self.FAULTS)


def configure_logging(level: str, log_format: str) -> None:
    levelno = _LEVELS[level]
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor = (
        structlog.dev.ConsoleRenderer(
            # Colour only for a terminal: ANSI codes in a redirected log are noise.
            colors=sys.stdout.isatty(),
            exception_formatter=structlog.dev.plain_traceback,
        )
        if log_format == "console"
        else structlog.processors.JSONRenderer()
    )
    # Tracebacks become text first, so that the redaction sees them too.
    final: list[Processor] = [structlog.processors.format_exc_info, _redact_secrets, renderer]
    structlog.configure(
        processors=[*shared, *final],
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
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(levelno)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True
    server_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, ClientFaultsAreNotErrors) for f in server_log.filters):
        server_log.addFilter(ClientFaultsAreNotErrors())
    # httpx logs every backend call at info; the gateway logs what matters about them itself.
    logging.getLogger("httpx").setLevel(max(levelno, logging.WARNING))
    logging.getLogger("httpcore").setLevel(max(levelno, logging.WARNING))
    # The edge logs every request once, with its request id; uvicorn's access log would repeat it.
    logging.getLogger("uvicorn.access").disabled = True
