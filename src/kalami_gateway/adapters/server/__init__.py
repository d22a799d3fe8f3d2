"""Everything the gateway changes in the server stack it runs on (uvicorn, websockets), and
nothing else: the HTTP protocol's head and pipelining budgets, the WebSocket protocol's
frame budget, liveness and lighter per-connection state, the shared heartbeat timer, the
kernel's view of a peer. Every private attribute of uvicorn or websockets the gateway relies
on is used here, listed in README.md beside this file, and checked by
tests/unit/adapters/test_third_party_internals.py. Only ``app`` imports this package."""

from kalami_gateway.adapters.server.http_protocol import guarded_http_protocol
from kalami_gateway.adapters.server.ws_protocol import lively_websocket_protocol

__all__ = ["guarded_http_protocol", "lively_websocket_protocol"]
