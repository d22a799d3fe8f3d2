"""The one shape of every HTTP error the gateway itself answers:
``{"error": "<what happened, for a person>", "code": "<stable, for a program>"}``.

Codes are a closed list (README, "Errors"): a client branches on ``code``, never on the
message's words. By default a status has one code; a few statuses carry more specific ones
(a 503 says whether the gateway is starting or stopping, or the backend is busy). Answers
relayed from the backend through ``/api`` keep the backend's own body: only what the gateway
says itself has this shape. WebSocket ``error`` messages have a vocabulary of their own
(docs/protocol.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import msgspec


class HttpError(msgspec.Struct, frozen=True):
    """The body of every error the gateway answers itself."""

    error: str
    code: str


# Each status's code when nothing more specific applies.
BY_STATUS: Final[Mapping[int, str]] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    422: "invalid_payload",
    431: "headers_too_large",
    500: "internal_error",
    502: "backend_unavailable",
    503: "unavailable",
    504: "backend_timeout",
}

# The more specific codes, and the status each goes with.
INVALID_HOST: Final = "invalid_host"  # 400: the Host header is missing or malformed
NOT_READY: Final = "not_ready"  # 503: the gateway is starting or stopping
# 503: no upstream connection free, or this client's share of them in use
BACKEND_BUSY: Final = "backend_busy"
PUSH_UNAVAILABLE: Final = "push_unavailable"  # 503: the push bus (Redis) cannot take it now
API_NOT_SERVED: Final = "api_not_served"  # 404: /api with BACKEND_MODE=stub
SPECIFIC: Final[Mapping[str, int]] = {
    INVALID_HOST: 400,
    NOT_READY: 503,
    BACKEND_BUSY: 503,
    PUSH_UNAVAILABLE: 503,
    API_NOT_SERVED: 404,
}

# Every code, with its status: the closed list the README documents.
CODES: Final[Mapping[str, int]] = {
    **{code: status for status, code in BY_STATUS.items()},
    **SPECIFIC,
}


def code_for(status: int) -> str:
    """The default code of ``status`` (an unlisted 4xx is ``bad_request``, 5xx
    ``internal_error``)."""
    code = BY_STATUS.get(status)
    if code is not None:
        return code
    return "internal_error" if status >= 500 else "bad_request"


def error_body(status: int, message: str, code: str | None = None) -> bytes:
    """The JSON body of an error answer."""
    return msgspec.json.encode(HttpError(message, code or code_for(status)))
