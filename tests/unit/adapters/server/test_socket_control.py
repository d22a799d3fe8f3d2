"""SocketControl hands the server's receive/send to the app only once the accept is sent."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest

from kalami_gateway.adapters.server.socket_control import SocketControl


def test_accepted_before_the_accept_is_refused() -> None:
    protocol = SimpleNamespace(
        handshake_complete=False,
        scope={"headers": [(b"a", b"b")]},
        transport=SimpleNamespace(is_closing=lambda: False),
    )
    control = SocketControl(cast(Any, protocol))
    with pytest.raises(RuntimeError, match="not accepted"):
        control.accepted()
    assert protocol.scope["headers"] == [(b"a", b"b")]  # nothing was let go
