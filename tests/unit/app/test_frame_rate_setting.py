"""WS_FRAME_RATE: the per-connection frame budget (issue 24), its default, its bounds, and the
server's protocol class that carries it."""

from __future__ import annotations

import pytest

from kalami_gateway.adapters.server.ws_protocol import (
    LivelyWebSocketProtocol,
    lively_websocket_protocol,
)
from kalami_gateway.app.settings import ENVIRONMENT, SettingsError, load_settings

SECRET = "s" * 32


def test_the_default_is_far_above_what_a_well_behaved_client_sends() -> None:
    settings = load_settings({"JWT_SECRET": SECRET}, env_file=None, stdout_is_tty=False)
    # 100 ms audio frames (10/s), 50 text messages/s (WS_MESSAGE_RATE), a ping every 30 s;
    # and WS_AUDIO_RATE in 4 KiB frames with the text rate besides: the other limits bind
    # first for them.
    assert settings.ws_frame_rate == 400
    assert settings.ws_frame_rate >= 3 * (10 + settings.ws_message_rate)
    assert settings.ws_frame_rate >= settings.ws_audio_rate / 4096 + settings.ws_message_rate
    assert "WS_FRAME_RATE" in [name for name, _, _ in ENVIRONMENT]


@pytest.mark.parametrize(("raw", "value"), [("0", 0), ("1", 1), ("5000", 5000)])
def test_it_is_read_and_zero_turns_it_off(raw: str, value: int) -> None:
    settings = load_settings(
        {"JWT_SECRET": SECRET, "WS_FRAME_RATE": raw}, env_file=None, stdout_is_tty=False
    )
    assert settings.ws_frame_rate == value


@pytest.mark.parametrize("raw", ["-1", "fast", "1000001", "2.5"])
def test_a_bad_value_is_one_line_naming_it(raw: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(
            {"JWT_SECRET": SECRET, "WS_FRAME_RATE": raw}, env_file=None, stdout_is_tty=False
        )
    message = str(caught.value)
    assert message.startswith("WS_FRAME_RATE: expected a whole number from 0 to 1000000")
    assert repr(raw) in message


def test_the_protocol_class_carries_the_budgets() -> None:
    cls = lively_websocket_protocol(150, 65536)
    assert issubclass(cls, LivelyWebSocketProtocol)
    assert (cls.frame_rate, cls.send_buffer_bytes) == (150.0, 65536)
    # The class itself (the bench's empty apps use it) has no frame budget.
    assert LivelyWebSocketProtocol.frame_rate == 0.0
