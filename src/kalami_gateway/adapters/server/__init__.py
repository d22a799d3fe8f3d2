"""Everything the gateway changes in the server stack it runs on (uvicorn, websockets), and
nothing else: the HTTP protocol's head and pipelining budgets, the WebSocket protocol's
frame budget, liveness and lighter per-connection state, the shared heartbeat timer, the
kernel's view of a peer, the handshake's line limit, the C allocator's trim after a mass
close (``memory_trim.py``). README.md beside this file lists every
private attribute or behaviour of a third-party package the gateway relies on, here or
elsewhere, and tests/unit/adapters/server/test_third_party_internals.py checks each against
the installed release. Only ``app`` imports this package."""

from kalami_gateway.adapters.server.acceptor import Acceptor
from kalami_gateway.adapters.server.handshake_lines import allow_long_handshake_lines
from kalami_gateway.adapters.server.http_protocol import guarded_http_protocol
from kalami_gateway.adapters.server.memory_trim import trim_after_mass_close
from kalami_gateway.adapters.server.ws_protocol import lively_websocket_protocol

__all__ = [
    "Acceptor",
    "allow_long_handshake_lines",
    "guarded_http_protocol",
    "lively_websocket_protocol",
    "trim_after_mass_close",
]
