"""The fakes the server protocols' tests run on: a transport that records what the protocols
call on it, an echoing ASGI app, the little of a GatewayApp that ``uvicorn_config`` reads,
the gateway's uvicorn config built around them, and ``settle`` (ready tasks run, no time
passes). Shared by test_native_protocol.py, test_native_handshake_hostile.py and
test_third_party_internals.py."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final, cast

import pytest
import uvicorn

from kalami_gateway.adapters.asgi import (
    SOCKET_CONTROL,
    ASGIApp,
    Receive,
    Scope,
    Send,
    send_json_error,
)
from kalami_gateway.app.factory import GatewayApp
from kalami_gateway.app.server import uvicorn_config
from kalami_gateway.app.settings import Settings

JWT_SECRET: Final = "server-fakes-secret-0123456789abcdef"


class FakeTransport(asyncio.Transport):
    """What the protocols call on a transport, recorded; ``write_buffer`` is the size it
    reports as not yet sent."""

    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closing = False
        self.aborted = False
        self.eof_written = False
        self.reading_paused = False
        self.write_buffer = 0
        self.protocol: asyncio.BaseProtocol | None = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.out += data

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.out += chunk

    def take(self) -> bytes:
        """What was written since last asked."""
        data = bytes(self.out)
        self.out.clear()
        return data

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = self.aborted = True

    def is_closing(self) -> bool:
        return self.closing

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def pause_reading(self) -> None:
        self.reading_paused = True

    def resume_reading(self) -> None:
        self.reading_paused = False

    def get_write_buffer_size(self) -> int:
        return self.write_buffer

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self.protocol is not None
        return self.protocol


class EchoApp:
    """A WebSocket is accepted (with ``subprotocol``; through the socket control's
    ``accepted`` when the server gives one, as the /ws handler does) and its text and bytes
    echoed, or refused before the accept (``refuse``); an HTTP request is answered 200,
    ``Connection: close`` when its query is ``close``. Notes what the server handed it and
    what it received."""

    def __init__(self, refuse: bool = False, subprotocol: str | None = None) -> None:
        self.refuse = refuse
        self.subprotocol = subprotocol
        # The WebSocket's scope as handed over (the server empties parts of it later).
        self.scope: dict[str, Any] = {}
        self.control_at_start: object = None
        self.accepted = False
        self.received: list[dict[str, Any]] = []
        self.send: Send | None = None  # the server's send, once accepted
        self.http_scopes: list[Scope] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.http_scopes.append(scope)
            if any(name == b"expect" for name, _ in scope["headers"]):
                await receive()
            await send_json_error(send, 200, "ok", close=scope["query_string"] == b"close")
            return
        self.scope = dict(scope)
        self.scope["headers"] = list(scope["headers"])
        self.scope["extensions"] = dict(scope["extensions"])
        control = self.control_at_start = scope["extensions"].get(SOCKET_CONTROL)
        await receive()  # websocket.connect
        if self.refuse:
            await send({"type": "websocket.close"})
            return
        await send({"type": "websocket.accept", "subprotocol": self.subprotocol})
        if control is not None:
            receive, send = control.accepted()
        self.accepted = True
        self.send = send
        while True:
            message = dict(await receive())
            self.received.append(message)
            if message["type"] != "websocket.receive":
                return
            if message.get("text") is not None:
                await send({"type": "websocket.send", "text": message["text"]})
            else:
                await send({"type": "websocket.send", "bytes": message["bytes"]})


class AppOnly:
    """What ``uvicorn_config`` reads of a GatewayApp."""

    def __init__(self, asgi: ASGIApp) -> None:
        self.asgi = asgi
        self.capacity = None  # no ceiling


def gateway_config(app: ASGIApp, **settings: Any) -> uvicorn.Config:
    """The gateway's own uvicorn config (``uvicorn_config``) around ``app``, loaded;
    ``settings`` as Settings takes them (JWT_SECRET a test one unless given)."""
    values: dict[str, Any] = {"jwt_secret": JWT_SECRET, **settings}
    config = uvicorn_config(cast(GatewayApp, AppOnly(app)), Settings(**values))
    config.load()
    return config


@pytest.fixture(autouse=True)
def keep_uvicorns_loggers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Imported by name into a test module, restores after each test what ``gateway_config``
    changes: uvicorn's Config empties the access logger's handlers and stops its
    propagation."""
    access = logging.getLogger("uvicorn.access")
    monkeypatch.setattr(access, "handlers", access.handlers)
    monkeypatch.setattr(access, "propagate", access.propagate)


async def settle() -> None:
    """Let ready tasks and callbacks run (no time passes)."""
    for _ in range(10):
        await asyncio.sleep(0)
