"""The WebSocket engine (``WS_ENGINE``, issue 27) the integration tests' gateways run, and how
a test looks at a connection on either engine.

``KALAMI_TEST_WS_ENGINE`` names the engine; unset, it is the one a gateway runs by default,
read from the settings schema so that flipping the default needs no edit of the tests.
``make integration-other-engine`` runs the WebSocket suites a second time on the engine that
is not the default, asking this module which one that is:
``python -m tests.integration.ws_engines`` prints it.

The tests assert one behaviour on whichever engine runs; where that behaviour can only be seen
inside the server (what a connection keeps, that it is freed), the helpers here look where
each engine would keep it.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Mapping
from typing import Final, get_args

import msgspec

from kalami_gateway.adapters.server.native.protocol import NativeWebSocketProtocol
from kalami_gateway.adapters.server.ws_protocol import LivelyWebSocketProtocol
from kalami_gateway.app.settings import Settings
from kalami_gateway.app.settings.table import WsEngine

ENGINES: Final[tuple[str, ...]] = get_args(WsEngine)
ServerProtocol = LivelyWebSocketProtocol | NativeWebSocketProtocol
# The class each engine runs a connection on (uvicorn runs a subclass made per server, with
# the gateway's budgets: app/server.py).
PROTOCOLS: Final[dict[str, type[ServerProtocol]]] = {
    "uvicorn": LivelyWebSocketProtocol,
    "native": NativeWebSocketProtocol,
}


def default_engine() -> str:
    """The engine a gateway runs without ``WS_ENGINE``: the ``Settings`` field's default."""
    (engine,) = (f.default for f in msgspec.structs.fields(Settings) if f.name == "ws_engine")
    return str(engine)


def other_engine() -> str:
    """The engine that is not the default (the one kept one setting away)."""
    (other,) = (engine for engine in ENGINES if engine != default_engine())
    return other


def engine_under_test(environ: Mapping[str, str] = os.environ) -> str:
    """``KALAMI_TEST_WS_ENGINE``, else the default. A name that is no engine stops the run: a
    typo must not test the default engine while the runner believes it tested another."""
    engine = environ.get("KALAMI_TEST_WS_ENGINE", default_engine())
    if engine not in ENGINES:
        raise ValueError(
            f"KALAMI_TEST_WS_ENGINE: expected one of {', '.join(ENGINES)}, got {engine!r}"
        )
    return engine


def server_side_connections(engine: str) -> list[ServerProtocol]:
    """``engine``'s protocol objects in this process, one per open connection of a gateway
    running it. Collected first: closed connections of earlier tests are cyclic garbage.
    type() rather than isinstance(): a dead weak proxy among the objects raises on
    isinstance."""
    gc.collect()
    kind = PROTOCOLS[engine]
    return [o for o in gc.get_objects() if issubclass(type(o), kind)]


def websocket_protocols_alive() -> int:
    """WebSocket protocol objects of either engine still tracked, unreachable ones included
    (with the collector off, cyclic garbage stays visible here): whichever engine a gateway
    runs, none may be left once its connections are gone."""
    kinds = tuple(PROTOCOLS.values())
    return sum(1 for o in gc.get_objects() if issubclass(type(o), kinds))


def assert_nothing_of_the_handshake_kept(protocol: ServerProtocol, *secrets: str) -> None:
    """What an accepted connection keeps of its handshake (issue 15), on either engine: an
    ASGI scope without headers, query or subprotocols (if the engine still holds a scope at
    all: the native one may let go of it while the connection is open), and none of
    ``secrets`` (a token, a header's value) where that engine could still hold the request
    it parsed."""
    scope = protocol.scope
    if scope is not None:
        assert scope["headers"] == []
        assert scope["query_string"] == b""
        assert scope["subprotocols"] == []
        for secret in secrets:
            assert secret not in repr(scope)
    if isinstance(protocol, LivelyWebSocketProtocol):
        assert scope is not None  # uvicorn's protocol keeps its scope for the connection's life
        assert "request" not in vars(protocol)
        assert "response" not in vars(protocol)
        # websockets' handshake parser stays suspended for the connection's life, holding
        # the Request it parsed: emptied, Authorization and Sec-WebSocket-Protocol included.
        held = protocol.conn.parser.gi_frame.f_locals["request"]  # type: ignore[attr-defined]
        assert list(held.headers.raw_items()) == []
        for secret in secrets:
            assert secret not in held.path
            assert secret not in repr(held)
    else:
        # The native engine parses the request itself: the parsed handshake goes once the
        # 101 is written, and nothing the protocol refers to holds a header or the query.
        assert protocol._handshake is None
        referents = repr(gc.get_referents(protocol))
        for secret in secrets:
            assert secret not in referents


if __name__ == "__main__":
    print(other_engine())
