"""No secret reaches a log line, at any level, in either format, tracebacks included."""

from __future__ import annotations

import logging

import pytest
import structlog

from kalami_gateway.app.logs import configure_logging, redact

SECRET = "s3cr3t-value"


pytestmark = pytest.mark.usefixtures("restore_logging")


def fail_with_headers_in_locals() -> None:
    scope = {"headers": [(b"authorization", f"Bearer {SECRET}".encode())]}
    raise RuntimeError(f"bad request: Cookie: session={SECRET}; {scope['headers'][0]!r}")


@pytest.mark.parametrize("log_format", ["console", "json"])
def test_handshake_headers_and_tracebacks_are_masked(
    log_format: str, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("debug", log_format)
    server_log = logging.getLogger("uvicorn.error")
    server_log.debug("< authorization: Bearer %s", SECRET)
    server_log.debug("< cookie: session=%s", SECRET)
    server_log.debug("< GET /ws?token=%s HTTP/1.1", SECRET)
    server_log.info("proxy", extra={"authorization": SECRET, "detail": f"set-cookie: a={SECRET}"})
    try:
        fail_with_headers_in_locals()
    except RuntimeError:
        structlog.get_logger("test").exception("handler_failed", token=SECRET)
        server_log.exception("Exception in ASGI application")
    out = capsys.readouterr().out
    assert SECRET not in out
    assert out.count("[redacted]") >= 8
    assert "Traceback" in out  # the traceback itself is still there, as plain text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("< Authorization: Bearer x", "< Authorization: [redacted]"),
        ("(b'authorization', b'Bearer x')", "(b'authorization', b'[redacted]')"),
        ("{'cookie': 'a=b; c=d'}", "{'cookie': '[redacted]'}"),
        ('"Set-Cookie": "id=1"', '"Set-Cookie": "[redacted]"'),
        ("proxy-authorization=Basic x\nnext line", "proxy-authorization=[redacted]\nnext line"),
        ("/ws?token=abc&resume=1", "/ws?token=[redacted]&resume=[redacted]"),
        ("/ws?resume=r-1&token=abc", "/ws?resume=[redacted]&token=[redacted]"),
        ("nothing secret here", "nothing secret here"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_a_clients_invalid_utf8_is_not_logged_as_the_servers_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("debug", "json")
    configure_logging("debug", "json")  # configured twice (a test, a reload): one filter
    server_log = logging.getLogger("uvicorn.error")
    try:
        b"\xff".decode()
    except UnicodeDecodeError:
        server_log.exception("Invalid UTF-8 sequence received from client.")
        server_log.exception("Exception in ASGI application")
    out = capsys.readouterr().out
    assert "Invalid UTF-8" not in out
    assert "Exception in ASGI application" in out  # the server's own errors still are
    assert len(server_log.filters) == 1
