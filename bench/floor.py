"""The floor under the gateway's socket path: apps that do nothing but answer, on the same
server the gateway runs on (uvicorn, uvloop, httptools, the gateway's websockets-sansio
protocol subclass, the same ping interval).

``raw``: a bare ASGI app — accept (letting the handshake go, ``SocketControl.accepted``,
as the gateway does), a ``connected`` welcome, ``pong`` for every text frame,
``audio_received`` for every binary one. ``litestar``: the same through a Litestar
``@websocket`` handler, every frame through Litestar's socket. ``litestar-accept``: Litestar
routes and accepts, then frames go through the server's own receive/send, as the gateway's
do (``SocketControl.accepted``). ``native``: the bare ASGI app on the gateway's own WebSocket
protocol (``WS_ENGINE=native``) instead of the websockets-sansio subclass. Measured with
the same client as the gateway and the Node stack, they show what the server stack costs
before any of the gateway's own code runs (issue 15: "show the floor").

    python -m bench.floor --kind raw --port 8700
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn
from litestar import Litestar, WebSocket, get, websocket

from kalami_gateway.adapters.asgi import SOCKET_CONTROL, Receive, Scope, Send
from kalami_gateway.adapters.server.native.protocol import NativeWebSocketProtocol
from kalami_gateway.adapters.server.socket_control import SocketControl
from kalami_gateway.adapters.server.ws_protocol import LivelyWebSocketProtocol

WELCOME = '{"type":"connected","payload":{"connectionId":"floor"}}'
PONG = '{"type":"pong"}'
AUDIO_RECEIVED = '{"type":"audio_received","payload":{"bytes":4096}}'


_open: set[int] = set()  # open connections, for /stats


async def raw_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] == "http":  # /health, and /stats as the bench reads it
        body = b'{"websocket":{"connections":%d}}' % len(_open)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    control = scope.get("extensions", {}).get(SOCKET_CONTROL)
    if isinstance(control, SocketControl | NativeWebSocketProtocol):  # as the gateway does
        receive, send = control.accepted()
    await send({"type": "websocket.send", "text": WELCOME})
    _open.add(id(scope))
    try:
        while True:
            event = await receive()
            if event["type"] != "websocket.receive":
                return
            if event.get("text") is not None:
                await send({"type": "websocket.send", "text": PONG})
            else:
                await send({"type": "websocket.send", "text": AUDIO_RECEIVED})
    finally:
        _open.discard(id(scope))


@get("/health", sync_to_thread=False)
def health() -> dict[str, str]:
    return {}


@get("/stats", sync_to_thread=False)
def stats() -> dict[str, dict[str, int]]:
    return {"websocket": {"connections": len(_open)}}


@websocket("/ws")
async def ws_floor(socket: WebSocket[Any, Any, Any]) -> None:
    await socket.accept()
    await socket.send_text(WELCOME)
    _open.add(id(socket))
    try:
        while True:
            event = await socket.receive()
            if event["type"] != "websocket.receive":
                return
            if event.get("text") is not None:
                await socket.send_text(PONG)
            else:
                await socket.send_text(AUDIO_RECEIVED)
    finally:
        _open.discard(id(socket))


@websocket("/ws")
async def ws_floor_accepted(socket: WebSocket[Any, Any, Any]) -> None:
    await socket.accept()
    control: SocketControl = socket.scope["extensions"][SOCKET_CONTROL]  # type: ignore[index,assignment]
    receive, send = control.accepted()
    await send({"type": "websocket.send", "text": WELCOME})
    _open.add(id(socket))
    try:
        while True:
            event = await receive()
            if event["type"] != "websocket.receive":
                return
            if event.get("text") is not None:
                await send({"type": "websocket.send", "text": PONG})
            else:
                await send({"type": "websocket.send", "text": AUDIO_RECEIVED})
    finally:
        _open.discard(id(socket))


KINDS = ("raw", "litestar", "litestar-accept", "native")


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.floor")
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    handlers = {"litestar": ws_floor, "litestar-accept": ws_floor_accepted}
    app: Any = (
        raw_app
        if args.kind in ("raw", "native")
        else Litestar([health, stats, handlers[args.kind]])
    )
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        ws=NativeWebSocketProtocol if args.kind == "native" else LivelyWebSocketProtocol,
        ws_ping_interval=30.0,
        ws_ping_timeout=30.0,
        ws_per_message_deflate=False,
        lifespan="on",
        log_config=None,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
