"""A browser's token comes as a ``bearer.<token>`` entry of Sec-WebSocket-Protocol, which
uvicorn logs at debug with every handshake header: masked like every other secret."""

from __future__ import annotations

import logging

import pytest

from kalami_gateway.app.logs import configure_logging, redact

SECRET = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1In0.c2lnbmF0dXJl"


pytestmark = pytest.mark.usefixtures("restore_logging")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            f"< Sec-WebSocket-Protocol: kalami.v1, bearer.{SECRET}",
            "< Sec-WebSocket-Protocol: kalami.v1, bearer.[redacted]",
        ),
        (
            f"< Sec-WebSocket-Protocol: bearer.{SECRET}, kalami.v1",
            "< Sec-WebSocket-Protocol: bearer.[redacted], kalami.v1",
        ),
        (f"['kalami.v1', 'bearer.{SECRET}']", "['kalami.v1', 'bearer.[redacted]']"),
        (f'"subprotocols": ["bearer.{SECRET}"]', '"subprotocols": ["bearer.[redacted]"]'),
        ("> Sec-WebSocket-Protocol: kalami.v1", "> Sec-WebSocket-Protocol: kalami.v1"),
    ],
)
def test_bearer_entries_are_masked(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize("log_format", ["console", "json"])
def test_a_handshake_logged_at_debug_shows_no_token(
    log_format: str, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("debug", log_format)
    server_log = logging.getLogger("uvicorn.error")
    server_log.debug("< Sec-WebSocket-Protocol: %s", f"kalami.v1, bearer.{SECRET}")
    server_log.debug("< Authorization: Bearer %s", SECRET)
    out = capsys.readouterr().out
    assert SECRET not in out
    assert out.count("[redacted]") == 2
    assert "kalami.v1" in out
