"""What the gateway relies on inside uvicorn, websockets, httptools, Litestar and
httpx-aiohttp/aiohttp beyond their documented APIs: the methods it overrides, the attributes
their constructors and handlers set that it reads or writes, module constants, call
signatures, and the behaviours its overrides assume.

``pyproject.toml`` caps each of these packages below its next minor release. After raising a
cap (``make lock UPGRADE=<pkg>``, then ``make test``) this file says what the new release
removed or changed: every failure names the package, the version installed and what to
re-check (src/kalami_gateway/adapters/server/README.md, which lists every internal relied
on, where, why, and which test here fails). It drives real instances on a fake transport:
no sockets, no sleeps, milliseconds.

The inventory is kept honest by the source scans: a name of uvicorn's that our subclasses
start using, or an attribute of ours that uvicorn starts using too, fails here until it is
added to the tables below. The tables and the README are held against each other at the
end of this file, so that neither lists what the other does not.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import re
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar, Final, cast

import aiohttp
import httptools
import httpx
import pytest
import uvicorn
import websockets.http11
from httpx_aiohttp import AiohttpTransport
from litestar import Litestar, WebSocket, websocket
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets import websockets_sansio_impl
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets import speedups as websockets_speedups
from websockets.client import ClientProtocol
from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from kalami_gateway.adapters.asgi import (
    SOCKET_CONTROL,
    Message,
    Receive,
    Scope,
    Send,
)
from kalami_gateway.adapters.backend.http import HttpxBackend
from kalami_gateway.adapters.capacity import Ceiling, SocketCapacity
from kalami_gateway.adapters.server import heartbeats, liveness, metered_reads, socket_control
from kalami_gateway.adapters.server.close_budget import CLOSE_TIMEOUT
from kalami_gateway.adapters.server.handshake_lines import (
    HANDSHAKE_LINE_LIMIT,
    allow_long_handshake_lines,
)
from kalami_gateway.adapters.server.http_protocol import (
    MAX_HEADER_COUNT,
    MAX_HEADER_LINE,
    MAX_REQUEST_LINE,
    GuardedHttpProtocol,
)
from kalami_gateway.adapters.server.native import handshake as native_handshake
from kalami_gateway.adapters.server.native import parser as native_parser
from kalami_gateway.adapters.server.socket_control import SocketControl
from kalami_gateway.adapters.server.standins import ReceiveQueue, WritableFlag
from kalami_gateway.adapters.server.ws_protocol import LivelyWebSocketProtocol
from kalami_gateway.app.factory import GatewayApp
from kalami_gateway.app.logs import ClientFaultsAreNotErrors
from kalami_gateway.app.server import GatewayServer
from kalami_gateway.domain.ports import BackendError, BackendErrorKind
from tests.unit.adapters.server.fakes import (  # noqa: F401  # the fixture, by name
    AppOnly,
    EchoApp,
    FakeTransport,
    gateway_config,
    keep_uvicorns_loggers,
    settle,
)

README: Final = "src/kalami_gateway/adapters/server/README.md"


def broken(package: str, what: str, recheck: str) -> str:
    """The failure message: the package and version installed, what changed, what to re-check."""
    return (
        f"{package} {metadata.version(package)}: {what}. Re-check {recheck} ({README}); "
        f"pyproject.toml caps {package} for this reason."
    )


# -- The inventory: our subclasses of uvicorn's classes ------------------------------------

# References to a name of the instance in a class's source: ``self.x`` and ``vars(self)...("x"``.
SELF_REFS: Final = r"\bself\.(\w+)|\bvars\(self\)\.\w+\(\"(\w+)\""
# The same for SocketControl, which holds the protocol as ``self._protocol`` / ``protocol``.
PROTOCOL_REFS: Final = r"\b(?:protocol|self\._protocol)\.(\w+)|\bvars\(protocol\)\.\w+\(\"(\w+)\""
ASSIGNED: Final = r"\bself\.(\w+)\s*(?::[^=\n]*)?=(?!=)"


@dataclasses.dataclass(frozen=True)
class Subclass:
    """One of our subclasses of a third-party class, and what it relies on of its base."""

    package: str
    base: type[Any]
    ours: type[Any]
    where: str
    # The base __init__'s parameters, which our __init__ passes through or calls with.
    init_params: tuple[str, ...]
    overrides: Mapping[str, str]  # method -> why we override it
    uses: Mapping[str, str]  # attribute or method of the base, not overridden -> how
    # (class, pattern): whose source is scanned for references to the base's names.
    sources: tuple[tuple[Any, str], ...]  # a class or a module
    # Attributes the base sets only once it runs (no plain instance has them): these must
    # still be assigned (``self.x = …``) somewhere in the base's code.
    set_while_running: frozenset[str] = frozenset()


HTTP_PROTOCOL: Final = Subclass(
    package="uvicorn",
    base=HttpToolsProtocol,
    ours=GuardedHttpProtocol,
    where="adapters/server/http_protocol.py",
    init_params=("self", "config", "server_state", "app_state", "_loop"),
    overrides={
        "__init__": "the limit counters; uvicorn builds the protocol with keyword arguments",
        "connection_made": "arms the header deadline from the connection's start",
        "connection_lost": "disarms it",
        "data_received": "replaced whole: heads fed in counted pieces, a pipeline bound "
        "(uvicorn's own body copied: feed, 400, upgrade)",
        "on_message_complete": "the end of a body: the next head's bytes are counted",
        "on_response_complete": "feeds what waited behind a full pipeline; keeps reading "
        "paused; closes a connection whose body is still arriving",
        "handle_websocket_upgrade": "lets go of the parser once the WebSocket protocol has it",
        "send_400_response": "silent after our own 408/414/431",
        "on_message_begin": "restarts the counters and the deadline per request",
        "on_url": "the request-line limit (414)",
        "on_header": "the header limits (431)",
        "on_headers_complete": "disarms the deadline",
    },
    uses={
        "loop": "call_later for the header deadline",
        "transport": "writes the 408/414/431 and closes",
        "parser": "fed by our data_received; set to None after the upgrade",
        "pipeline": "its length bounds how many requests are parsed ahead",
        "cycle": "whether the answer has begun (response_started) when a body times out",
        "scope": "raw_path: outside /api a body has a deadline",
        "flow": "pause_reading while requests wait unparsed",
        "logger": "the 'Invalid HTTP request received.' warning, as uvicorn logs it",
        "_should_upgrade": "whether an upgrade is a WebSocket one (as uvicorn decides)",
        "_unsupported_upgrade_warning": "uvicorn's warning for any other upgrade",
        "_unset_keepalive_if_required": "cancels the keep-alive timer when bytes arrive",
    },
    sources=((GuardedHttpProtocol, SELF_REFS),),
)

WS_PROTOCOL: Final = Subclass(
    package="uvicorn",
    base=WebSocketsSansIOProtocol,
    ours=LivelyWebSocketProtocol,
    where=(
        "adapters/server/ws_protocol.py, adapters/server/socket_control.py, "
        "adapters/server/metered_reads.py, adapters/server/liveness.py"
    ),
    init_params=("self", "config", "server_state", "app_state", "_loop"),
    overrides={
        "__init__": "swaps queue and writable for lighter stand-ins; a shorter close_timeout",
        "data_received": "replaced whole (uvicorn's own copied: feed, parser error, events): "
        "frames counted against the frame budget, reads over it parsed in pieces or kept, "
        "bytes before the accept kept, bounded reads after a close; any frame is a pong",
        "handle_connect": "puts SocketControl in the scope before the app's task runs",
        "start_keepalive": "the 101 is out: the frame budget starts, frames kept are parsed",
        "handle_cont": "fragments gathered in one bytearray, not a list of tiny bytes",
        "handle_parser_exception": "a lingering close after a protocol error (1009), on "
        "close_timer so that the app's end does not cut it short",
        "pause_writing": "reads take the slow path, which checks the write buffer (pongs)",
        "resume_writing": "back to the fast path",
        "connection_lost": "breaks reference cycles once the app is done too; ends a pause",
        "on_task_complete": "the same, from the app's side",
        "schedule_ping": "the next ping on the shared heartbeat timer",
        "keepalive_timeout": "no drop while the gateway itself is not reading: ping again, "
        "unless the peer's kernel acknowledges nothing either (tcp_peer)",
    },
    uses={
        "loop": "call_later (lingering close, throttling), time, heartbeats.for_loop",
        "transport": "write, write_eof, pause/resume_reading, close, abort, buffer size",
        "conn": "websockets' ServerProtocol: receive_data, events, parser_exc, close_sent, "
        "data_to_send, parser",
        "config": "ws_max_size: how much a lingering close reads at most",
        "queue": "replaced by ReceiveQueue (put_nowait, get, empty)",
        "writable": "replaced by WritableFlag (set, clear, wait)",
        "read_paused": "read, cleared and set (reading paused for the frame budget is ours; "
        "resumed for the lingering close)",
        "close_sent": "read (bytes after our close frame are bounded), set after our close",
        "close_timer": "the lingering close's timer (run_asgi leaves the socket open while "
        "it is set)",
        "close_timeout": "set shorter: a refused socket is closed within CLOSE_TIMEOUT",
        "handshake_initiated": "bytes before it are the upgrade request",
        "handshake_complete": "SocketControl.accepted refuses before it; frames before it are kept",
        "handle_events": "called after each parse, as uvicorn's data_received does",
        "frames": "the fragments of the message being received (handle_cont)",
        "send_receive_event_to_app": "called by handle_cont at a message's last fragment",
        "ping_interval": "schedule_ping's delay",
        "ping_timeout": "how long a quiet peer's kernel may acknowledge nothing (half of it)",
        "last_ping_rtt": "schedule_ping's delay",
        "ping_timer": "set to a heartbeats.Beat (uvicorn only cancel()s it)",
        "pong_timer": "cancelled and cleared when any frame arrives",
        "pending_ping_payload": "cleared with the pong timer",
        "send_keepalive_ping": "the callback schedule_ping arms",
        "request": "set by handle_connect; popped after the accept",
        "response": "status_code read in handle_connect; popped after the accept",
        "scope": "extensions written; headers and query emptied; cleared at the end",
        "receive": "handed to the app after the accept",
        "send": "handed to the app after the accept",
    },
    sources=(
        (LivelyWebSocketProtocol, SELF_REFS),
        (SocketControl, PROTOCOL_REFS),
        # What the engines share, called with the protocol (adapters/server/README.md).
        (metered_reads, r"\breader\.(\w+)()"),
        (liveness, r"\bwatched\.(\w+)()"),
        (socket_control, PROTOCOL_REFS),
    ),
)

SERVER: Final = Subclass(
    package="uvicorn",
    base=uvicorn.Server,
    ours=GatewayServer,
    where="app/server.py",
    init_params=("self", "config"),
    overrides={
        "__init__": "the app to drain and the signals to catch",
        "capture_signals": "no re-raise of SIGTERM/SIGINT after a graceful drain",
        "startup": "uvicorn's startup without its servers, then the gateway's own accept "
        "loops; freezes the heap after start-up (collect_less); starts the workers' "
        "metrics copy",
        "shutdown": "drains WebSockets with 1001 before uvicorn's 1012",
    },
    uses={
        "handle_exit": "installed as the SIGINT/SIGTERM handler",
        "config": "bind_socket when handed no sockets; the protocol class and its arguments",
        "lifespan": "lifespan.state, passed to every HTTP protocol as uvicorn does",
        "server_state": "its connections: the client sockets the ceiling counts",
        "servers": "set to the Acceptors, which uvicorn's shutdown closes",
    },
    sources=((GatewayServer, SELF_REFS),),
    set_while_running=frozenset({"lifespan", "servers"}),
)

SUBCLASSES: Final = (HTTP_PROTOCOL, WS_PROTOCOL, SERVER)

# What of websockets' ServerProtocol (``self.conn``) the WebSocket protocol touches.
CONN_USES: Final = {
    "receive_data": "fed by our data_received (whole, or in pieces the frame budget allows)",
    "events": "counted after each feed (the frames parsed) before handle_events takes them",
    "parser_exc": "set when a feed broke the protocol (handle_parser_exception)",
    "close_sent": "the close frame websockets queued after a protocol error (code, reason)",
    "data_to_send": "the bytes of that close frame",
    "parser": "set to None once the connection is over (its generator holds the protocol)",
}

# uvicorn's per-connection objects we replace, and the stand-in that must do all uvicorn asks.
STAND_INS: Final[Mapping[str, type[Any]]] = {
    "queue": ReceiveQueue,
    "writable": WritableFlag,
    "ping_timer": heartbeats.Beat,
}

# Where uvicorn must still call the methods we override (not every path is driven below).
CALL_SITES: Final = (
    (uvicorn.Server, "serve", r"with self\.capture_signals\(\)", "GatewayServer.capture_signals"),
    (uvicorn.Server, "_serve", r"self\.startup\(sockets=sockets\)", "GatewayServer.startup"),
    (uvicorn.Server, "_serve", r"self\.shutdown\(sockets=sockets\)", "GatewayServer.shutdown"),
    (
        uvicorn.Server,
        "shutdown",
        r"for server in self\.servers:\s+server\.close\(\)",
        "Acceptor.close (the gateway's accept loops stop first)",
    ),
    (
        uvicorn.Server,
        "startup",
        r"if sockets is not None:(?s:.*?)for sock in sockets:",
        "GatewayServer.startup (handed no sockets, uvicorn makes no server of its own)",
    ),
    (
        WebSocketsSansIOProtocol,
        "send_keepalive_ping",
        r"self\.keepalive_timeout\b",
        "LivelyWebSocketProtocol.keepalive_timeout",
    ),
    (
        WebSocketsSansIOProtocol,
        "handle_pong",
        r"self\.schedule_ping\(\)",
        "LivelyWebSocketProtocol.schedule_ping",
    ),
    (
        WebSocketsSansIOProtocol,
        "send",
        r"self\.transport\.write\(b\"\"\.join\(output\)\)\s+self\.start_keepalive\(\)",
        "LivelyWebSocketProtocol.start_keepalive (right after the 101 is written)",
    ),
    (
        WebSocketsSansIOProtocol,
        "handle_events",
        r"self\.handle_cont\(event\)",
        "LivelyWebSocketProtocol.handle_cont",
    ),
    (
        WebSocketsSansIOProtocol,
        "run_asgi",
        r"if self\.close_timer is None:\s+self\.transport\.close\(\)",
        "LivelyWebSocketProtocol.handle_parser_exception (the linger on close_timer)",
    ),
    (
        WebSocketsSansIOProtocol,
        "send",
        r"self\.close_timer = self\.loop\.call_later\(self\.close_timeout,",
        "LivelyWebSocketProtocol.__init__ (close_timeout)",
    ),
)


# -- The checks (functions, so that the tests at the end can watch them fail) --------------


_sources: dict[object, str] = {}

# src/kalami_gateway, which the paths in the tables and the messages are relative to.
PACKAGE: Final = Path(inspect.getfile(heartbeats)).parents[2]


def source_path(obj: Any) -> str:
    """Where ``obj`` is defined, relative to src/kalami_gateway."""
    return Path(inspect.getfile(obj)).relative_to(PACKAGE).as_posix()


def source_of(obj: Any) -> str:
    """``inspect.getsource``, read once per object (the modules scanned are large)."""
    if obj not in _sources:
        _sources[obj] = inspect.getsource(obj)
    return _sources[obj]


def params(function: Callable[..., object]) -> list[str]:
    """A signature's parameters, without annotations or defaults: ``name``, ``*args``,
    ``name (keyword-only)``."""
    kinds: dict[object, str] = {
        inspect.Parameter.KEYWORD_ONLY: " (keyword-only)",
        inspect.Parameter.POSITIONAL_ONLY: " (positional-only)",
    }
    return [
        f"{p.replace(annotation=p.empty, default=p.empty)}{kinds.get(p.kind, '')}"
        for p in inspect.signature(function).parameters.values()
    ]


def override_problem(sub: Subclass, name: str) -> str | None:
    """Why our override of ``name`` no longer fits the base class, or None."""
    recheck = f"{sub.ours.__name__}.{name} in {sub.where}"
    base_method = getattr(sub.base, name, None)
    if base_method is None or not callable(base_method):
        return broken(
            sub.package,
            f"{sub.base.__qualname__} has no method {name!r}: our override overrides nothing",
            recheck,
        )
    if name == "__init__":
        found = tuple(inspect.signature(base_method).parameters)
        if found != sub.init_params:
            return broken(
                sub.package,
                f"{sub.base.__qualname__}.__init__ takes {found}, not {sub.init_params}",
                recheck,
            )
        return None
    theirs, ours = params(base_method), params(getattr(sub.ours, name))
    if theirs != ours:
        return broken(
            sub.package,
            f"{sub.base.__qualname__}.{name} takes ({', '.join(theirs)}), "
            f"our override ({', '.join(ours)})",
            recheck,
        )
    return None


def names_of_base(sub: Subclass, instance: object) -> set[str]:
    """Every name the base class has, sets on a real instance, or assigns anywhere."""
    names = set(dir(sub.base)) | set(vars(instance))
    for cls in sub.base.__mro__:
        if cls.__module__.split(".")[0] == sub.package:
            names |= set(re.findall(ASSIGNED, source_of(cls)))
    return names


def assigned_by_base(sub: Subclass) -> set[str]:
    """The attributes the base's own code sets (``self.x = …``), wherever it does (the
    server's ``lifespan`` and ``servers`` only once it runs)."""
    names: set[str] = set()
    for cls in sub.base.__mro__:
        if cls.__module__.split(".")[0] == sub.package:
            names |= set(re.findall(ASSIGNED, source_of(cls)))
    return names


def exists_problem(sub: Subclass, name: str, instance: object) -> str | None:
    """Why ``name`` (overridden or used) is missing from the base, or None."""
    if hasattr(sub.base, name) or name in vars(instance):
        return None
    if name in sub.set_while_running and name in assigned_by_base(sub):
        return None
    return broken(
        sub.package,
        f"{sub.base.__qualname__} no longer has {name!r}, on the class or set on an instance",
        f"what {sub.where} does with it ({sub.overrides.get(name) or sub.uses[name]})",
    )


def referenced(sources: Iterable[tuple[Any, str]]) -> set[str]:
    names: set[str] = set()
    for cls, pattern in sources:
        for groups in re.findall(pattern, source_of(cls)):
            names.add(next(g for g in groups if g))
    return names


def name_problems(sub: Subclass, instance: object) -> list[str]:
    """A name our subclass defines that the base has too (a collision), or a name of the
    base's that our code touches and the inventory does not list."""
    known = set(sub.overrides) | set(sub.uses)
    own_dict = {n for n in vars(sub.ours) if not (n.startswith("__") and n.endswith("__"))}
    own = own_dict | set(re.findall(ASSIGNED, source_of(sub.ours)))
    theirs = names_of_base(sub, instance)
    problems = []
    for name in sorted((own_dict | referenced(sub.sources)) - known):
        if name not in own:
            problems.append(
                broken(
                    sub.package,
                    f"{sub.where} uses {sub.base.__qualname__}.{name}, which this inventory "
                    "does not list",
                    f"that use, and add {name!r} to the tables in this test and the README",
                )
            )
        elif name in theirs:
            problems.append(
                broken(
                    sub.package,
                    f"{sub.base.__qualname__} now has {name!r} too: ours shadows it",
                    f"{sub.ours.__name__}.{name} in {sub.where} (rename ours, or list it "
                    "as an override)",
                )
            )
    return problems


def stand_in_problems(source: str) -> list[str]:
    """What uvicorn's WebSocket protocol calls on an object we replaced that ours lacks."""
    problems = []
    for attribute, stand_in in STAND_INS.items():
        for method in sorted(set(re.findall(rf"\bself\.{attribute}\.(\w+)", source))):
            if not hasattr(stand_in, method):
                problems.append(
                    broken(
                        "uvicorn",
                        f"its WebSocket protocol calls self.{attribute}.{method}(), which our "
                        f"stand-in {stand_in.__name__} does not have",
                        f"{stand_in.__name__} ({source_path(stand_in)})",
                    )
                )
    return problems


def call_site_problem(owner: type[Any], method: str, pattern: str, ours: str) -> str | None:
    function = getattr(owner, method, None)
    if function is not None and re.search(pattern, source_of(function)):
        return None
    return broken(
        "uvicorn",
        f"{owner.__qualname__}.{method} no longer does {pattern!r}: our {ours} may never run",
        f"where uvicorn now calls it, and {ours}",
    )


# -- Real instances on a fake transport ----------------------------------------------------


@dataclasses.dataclass
class Served:
    """The gateway's own uvicorn settings around an EchoApp, and the state protocols share."""

    config: uvicorn.Config
    state: ServerState
    app: EchoApp

    def http_protocol(self) -> tuple[GuardedHttpProtocol, FakeTransport]:
        cls = self.config.http_protocol_class
        assert issubclass(cls, GuardedHttpProtocol)
        protocol = cls(
            config=self.config,
            server_state=self.state,
            app_state={},
            _loop=asyncio.get_running_loop(),
        )
        transport = FakeTransport()
        protocol.connection_made(transport)
        return protocol, transport

    async def finish(self) -> None:
        """Let every app task end, and the callbacks of their ends run."""
        await asyncio.gather(*list(self.state.tasks))
        await settle()


@pytest.fixture
def served() -> Served:
    app = EchoApp()
    return Served(gateway_config(app), ServerState(), app)


def client_handshake(path: str = "/ws?token=abc") -> tuple[ClientProtocol, bytes]:
    client = ClientProtocol(parse_uri(f"ws://gateway.test{path}"))
    client.send_request(client.connect())
    return client, b"".join(client.data_to_send())


def client_receives(client: ClientProtocol, transport: FakeTransport) -> list[object]:
    client.receive_data(transport.take())
    events: list[object] = list(client.events_received())
    client.data_to_send()  # the client's own answers (a pong) are not sent on
    return events


@pytest.fixture
async def bases(served: Served) -> AsyncIterator[dict[type[Any], object]]:
    """Plain instances of uvicorn's classes, each as far along as the gateway's are when it
    touches them: the HTTP protocol connected, the WebSocket protocol past its handshake."""
    loop = asyncio.get_running_loop()
    http = HttpToolsProtocol(
        config=served.config, server_state=served.state, app_state={}, _loop=loop
    )
    http.connection_made(FakeTransport())
    ws = WebSocketsSansIOProtocol(
        config=served.config, server_state=served.state, app_state={}, _loop=loop
    )
    ws.connection_made(FakeTransport())
    ws.data_received(client_handshake()[1])
    yield {
        HttpToolsProtocol: http,
        WebSocketsSansIOProtocol: ws,
        uvicorn.Server: uvicorn.Server(served.config),
    }
    ws.connection_lost(None)
    http.connection_lost(None)
    await served.finish()


# -- uvicorn: the inventory ----------------------------------------------------------------


def inventory() -> Iterator[pytest.ParameterSet]:
    """Every row of the tables above as one check against the installed release: the check,
    its arguments, and the uvicorn class of which it also needs a real instance (if any)."""
    for sub in SUBCLASSES:
        ours = sub.ours.__name__
        for name in sub.overrides:
            yield pytest.param(override_problem, (sub, name), None, id=f"override:{ours}.{name}")
        for name in [*sub.overrides, *sub.uses]:
            yield pytest.param(exists_problem, (sub, name), sub.base, id=f"exists:{ours}.{name}")
        yield pytest.param(name_problems, (sub,), sub.base, id=f"names:{ours}")
    source = source_of(websockets_sansio_impl)
    yield pytest.param(stand_in_problems, (source,), None, id="stand-ins")
    for site in CALL_SITES:
        yield pytest.param(call_site_problem, site, None, id=f"call-site:{site[3]}")


@pytest.mark.parametrize(("check", "args", "instance_of"), list(inventory()))
def test_the_inventory_still_holds(
    check: Callable[..., str | list[str] | None],
    args: tuple[Any, ...],
    instance_of: type[Any] | None,
    bases: dict[type[Any], object],
) -> None:
    """Each override still overrides a method of the same signature; each name overridden
    or used still exists on a real instance; our own names do not collide and every name of
    theirs we touch is listed; uvicorn calls nothing on a stand-in that it lacks; uvicorn
    still calls what we override."""
    found = check(*args, *([] if instance_of is None else [bases[instance_of]]))
    problems = [found] if isinstance(found, str) else found or []
    assert not problems, "\n".join(problems)


def test_websockets_connection_state_the_ws_protocol_touches(
    bases: dict[type[Any], object],
) -> None:
    ws = bases[WebSocketsSansIOProtocol]
    assert isinstance(ws, WebSocketsSansIOProtocol)
    conn: object = ws.conn
    assert isinstance(conn, ServerProtocol)
    touched = set(re.findall(r"\bself\.conn\.(\w+)", source_of(LivelyWebSocketProtocol)))
    unlisted = touched - set(CONN_USES)
    assert not unlisted, broken(
        "websockets", f"adapters/server/ws_protocol.py uses conn.{unlisted} too", "CONN_USES here"
    )
    for name, why in CONN_USES.items():
        assert hasattr(conn, name), broken(
            "websockets", f"ServerProtocol has no {name!r} any more", f"ws_protocol.py: {why}"
        )
    assert inspect.isgenerator(getattr(conn, "parser", None)), broken(
        "websockets",
        "ServerProtocol.parser is no longer a generator",
        "LivelyWebSocketProtocol._let_go",
    )


def test_uvicorn_takes_the_gateways_protocol_classes(served: Served) -> None:
    assert issubclass(served.config.http_protocol_class, GuardedHttpProtocol), broken(
        "uvicorn",
        "Config(http=<class>) no longer serves that class",
        "uvicorn_config in app/server.py",
    )
    ws_class = served.config.ws_protocol_class
    assert isinstance(ws_class, type), broken(
        "uvicorn",
        "Config(ws=<class>) no longer serves that class",
        "uvicorn_config in app/server.py",
    )
    assert issubclass(ws_class, LivelyWebSocketProtocol), broken(
        "uvicorn",
        "Config(ws=<class>) no longer serves that class",
        "uvicorn_config in app/server.py",
    )
    GatewayServer(served.config, cast(GatewayApp, AppOnly(served.app)), 1.0)


def test_uvicorn_logging_that_logs_py_rewires() -> None:
    assert re.search(r"color_message", source_of(uvicorn.server)), broken(
        "uvicorn",
        "it no longer passes an ANSI copy of its messages as extra 'color_message'",
        "_redact_secrets in app/logs.py (drop the new key instead)",
    )
    for name in ("uvicorn.error", "uvicorn.access"):
        assert re.search(rf"getLogger\(\"{re.escape(name)}\"\)", source_of(HttpToolsProtocol)), (
            broken("uvicorn", f"its HTTP protocol no longer logs to {name!r}", "configure_logging")
        )
    # The client faults the filter drops, word for word, from the logger it is set on.
    sansio = source_of(websockets_sansio_impl)
    assert 'getLogger("uvicorn.error")' in sansio, broken(
        "uvicorn", "its websockets-sansio protocol logs elsewhere", "ClientFaultsAreNotErrors"
    )
    for fault in ClientFaultsAreNotErrors.FAULTS:
        assert f'"{fault}"' in sansio, broken(
            "uvicorn",
            f"its websockets-sansio protocol no longer logs {fault!r} (reworded?)",
            "ClientFaultsAreNotErrors.FAULTS in app/logs.py",
        )


# -- uvicorn, websockets: a connection through the gateway's protocols ----------------------


async def test_a_websocket_through_the_gateways_protocols(served: Served) -> None:
    http, transport = served.http_protocol()
    client, handshake = client_handshake()
    http.data_received(handshake)

    ws = transport.protocol
    assert isinstance(ws, LivelyWebSocketProtocol), broken(
        "uvicorn",
        "an upgrade request no longer reaches Config.ws through handle_websocket_upgrade",
        "GuardedHttpProtocol.handle_websocket_upgrade",
    )
    assert http.parser is None
    assert {"request", "response", "scope"} <= vars(ws).keys(), broken(
        "uvicorn",
        "handle_connect no longer sets request, response and scope on the instance",
        "SocketControl.accepted and LivelyWebSocketProtocol._let_go",
    )
    await settle()
    assert isinstance(served.app.control_at_start, SocketControl), broken(
        "uvicorn",
        "the app's task ran before handle_connect returned (eager task?): no kalami.socket",
        "LivelyWebSocketProtocol.handle_connect",
    )
    [response] = client_receives(client, transport)
    accepted = served.app.accepted and isinstance(response, Response)
    assert accepted, broken(
        "uvicorn", "the app's accept did not go out as a 101", "SocketControl.accepted"
    )
    assert isinstance(response, Response)
    assert response.status_code == 101
    assert isinstance(ws.ping_timer, heartbeats.Beat), broken(
        "uvicorn",
        "the accept no longer schedules the first ping through self.schedule_ping()",
        "LivelyWebSocketProtocol.schedule_ping",
    )

    # A message pauses reading until the app takes it; the answer goes out through the
    # server's send, with the handshake's Request and Response let go.
    client.send_text(b"hello")
    ws.data_received(b"".join(client.data_to_send()))
    assert transport.reading_paused, broken(
        "uvicorn",
        "a received message no longer pauses reading until the app's next receive",
        "the rate limit's back-pressure (adapters/http/websocket.py)",
    )
    await settle()
    assert not transport.reading_paused
    [echo] = client_receives(client, transport)
    echoed = isinstance(echo, Frame) and (echo.opcode, echo.data) == (Opcode.TEXT, b"hello")
    assert echoed, broken(
        "uvicorn",
        "its receive and send no longer carry messages once the handshake's Request and "
        "Response are let go",
        "SocketControl.accepted",
    )

    # Any frame from the peer stands for the pong.
    ws.send_keepalive_ping()
    armed = ws.pong_timer is not None and ws.pending_ping_payload is not None
    assert armed, broken(
        "uvicorn",
        "send_keepalive_ping no longer arms pong_timer with pending_ping_payload",
        "LivelyWebSocketProtocol.data_received and keepalive_timeout",
    )
    client_receives(client, transport)
    client.send_text(b"alive")
    ws.data_received(b"".join(client.data_to_send()))
    assert (ws.pong_timer, ws.pending_ping_payload) == (None, None)
    assert isinstance(ws.ping_timer, heartbeats.Beat)

    ws.connection_lost(None)
    with pytest.raises(OSError):  # noqa: PT011  # ClientDisconnected, whatever its words
        await ws.send({"type": "websocket.send", "text": "late"})
    await served.finish()
    let_go = ws.conn.parser is None and not ws.scope
    assert let_go, broken(
        "uvicorn",
        "on_task_complete no longer runs when the app's task ends",
        "LivelyWebSocketProtocol._let_go",
    )


def test_a_disconnected_send_raises_an_oserror() -> None:
    assert issubclass(ClientDisconnected, OSError), broken(
        "uvicorn", "ClientDisconnected is no longer an OSError", "SocketChannel.send's except"
    )


def test_uvicorn_holds_a_websocket_send_only_while_writing_is_paused() -> None:
    methods = inspect.getmembers(WebSocketsSansIOProtocol, inspect.isfunction)
    clearing = [name for name, method in methods if "self.writable.clear()" in source_of(method)]
    assert clearing == ["pause_writing"], broken(
        "uvicorn",
        f"self.writable, which its send waits for, is cleared in {clearing}, not only in "
        "pause_writing",
        "SocketChannel.send in adapters/http/websocket.py (no deadline while nothing is unsent)",
    )


async def test_frames_before_the_accept_wait_for_the_101(served: Served) -> None:
    http, transport = served.http_protocol()
    client, handshake = client_handshake()
    http.data_received(handshake)
    ws = transport.protocol
    assert isinstance(ws, LivelyWebSocketProtocol)
    assert ws.close_timeout == CLOSE_TIMEOUT
    # A client that does not wait for the 101 (websockets' own would not send this yet).
    ws.data_received(Frame(Opcode.PING, b"early").serialize(mask=True))  # not accepted yet
    assert transport.take() == b"", broken(
        "uvicorn",
        "the protocol wrote something before the app's accept",
        "LivelyWebSocketProtocol._received_slowly (frames before the accept)",
    )
    await settle()
    response, pong = client_receives(client, transport)
    in_order = isinstance(response, Response) and response.status_code == 101
    in_order = in_order and isinstance(pong, Frame) and pong.opcode is Opcode.PONG
    assert in_order, broken(
        "uvicorn",
        "the accept no longer calls self.start_keepalive() once the 101 is written",
        "LivelyWebSocketProtocol.start_keepalive",
    )
    assert not transport.reading_paused
    ws.connection_lost(None)
    await served.finish()


async def test_a_read_over_the_frame_budget_is_parsed_in_part(served: Served) -> None:
    http, transport = served.http_protocol()
    client, handshake = client_handshake()
    http.data_received(handshake)
    ws = transport.protocol
    assert isinstance(ws, LivelyWebSocketProtocol)
    await settle()
    client_receives(client, transport)
    budget = int(ws.frame_rate * 2)  # a burst of two seconds' worth
    for _ in range(budget * 3):
        client.send_ping(b"")
    ws.data_received(b"".join(client.data_to_send()))  # one read, three bursts of frames
    pongs = [e for e in client_receives(client, transport) if isinstance(e, Frame)]
    parsed_in_part = budget <= len(pongs) < budget * 3 and transport.reading_paused
    assert parsed_in_part, broken(
        "websockets",
        f"{len(pongs)} of {budget * 3} frames of one read were answered: receive_data no "
        "longer parses all it is fed at once into conn.events",
        "LivelyWebSocketProtocol._parse and the frame budget",
    )
    ws.connection_lost(None)
    await served.finish()


async def test_a_frame_over_the_size_limit_gets_a_lingering_close(served: Served) -> None:
    http, transport = served.http_protocol()
    client, handshake = client_handshake()
    http.data_received(handshake)
    ws = transport.protocol
    assert isinstance(ws, LivelyWebSocketProtocol)
    await settle()
    client_receives(client, transport)

    too_big = served.config.ws_max_size + 1
    ws.data_received(b"\x82\xff" + too_big.to_bytes(8, "big") + b"mask")
    close = ws.conn.close_sent
    assert (close.code if close else None) == 1009, broken(
        "websockets",
        "a frame over max_size no longer leaves close_sent (1009) on the protocol",
        "LivelyWebSocketProtocol.handle_parser_exception",
    )
    assert (transport.eof_written, transport.closing) == (True, False), broken(
        "uvicorn",
        "a protocol error no longer reaches self.handle_parser_exception",
        "LivelyWebSocketProtocol.handle_parser_exception",
    )
    client_receives(client, transport)
    assert client.close_rcvd is not None
    assert client.close_rcvd.code == 1009

    ws.connection_lost(None)
    await served.finish()


@pytest.mark.parametrize(
    ("status", "request_bytes"),
    [
        (414, b"GET /" + b"a" * MAX_REQUEST_LINE + b" HTTP/1.1\r\nHost: gw\r\n\r\n"),
        (431, b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * (MAX_HEADER_COUNT + 1) + b"\r\n"),
    ],
)
async def test_a_refused_request_is_answered_once(
    served: Served, status: int, request_bytes: bytes
) -> None:
    http, transport = served.http_protocol()
    http.data_received(request_bytes)
    answer = transport.take()
    answered_once = answer.startswith(b"HTTP/1.1 %d " % status) and answer.count(b"HTTP/1.1") == 1
    assert answered_once, broken(
        "httptools",
        "an exception raised in a parser callback no longer stops the parse as an "
        f"HttpParserError that uvicorn answers with send_400_response (got {answer[:60]!r})",
        "GuardedHttpProtocol._refuse and send_400_response",
    )
    # Answered, then a lingering close: no more to write, what still comes is discarded.
    assert transport.eof_written
    http.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.take() == b""
    http.connection_lost(None)


async def test_an_accept_for_a_client_already_leaving_is_a_reset_not_a_fault(
    served: Served,
) -> None:
    class LateApp:
        error: BaseException | None = None

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            control = scope["extensions"][SOCKET_CONTROL]
            await receive()  # websocket.connect
            transport.close()  # the client gave up waiting (its own handshake timeout)
            await send({"type": "websocket.accept"})
            try:
                control.accepted()
            except BaseException as exc:  # what it raises is the point
                self.error = exc

    app = LateApp()
    served.config.loaded_app = app
    http, transport = served.http_protocol()
    http.data_received(client_handshake()[1])
    await served.finish()
    assert isinstance(app.error, ConnectionResetError), broken(
        "uvicorn",
        f"an accept on a closing socket no longer leaves handshake_complete unset ({app.error!r})",
        "SocketControl.accepted",
    )
    assert transport.protocol is not None
    transport.protocol.connection_lost(None)


async def test_past_the_ceiling_a_handshake_gets_503_and_the_probes_still_answer(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    capacity = SocketCapacity(Ceiling(1, 100, None))
    capacity.count_with(lambda: len(served.state.connections))
    monkeypatch.setattr(served.config.http_protocol_class, "capacity", capacity)
    first, first_transport = served.http_protocol()
    first.data_received(client_handshake()[1])
    assert isinstance(first_transport.protocol, LivelyWebSocketProtocol)
    assert len(served.state.connections) == 1, broken(
        "uvicorn",
        "server_state.connections no longer holds the WebSocket protocol in place of the "
        "HTTP one it was upgraded from",
        "SocketCapacity's count (app/server.py)",
    )
    await settle()

    second, transport = served.http_protocol()  # the second client socket: past the ceiling
    second.data_received(client_handshake()[1])
    answer = transport.take()
    assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"\r\nretry-after: 5\r\n" in answer
    assert transport.protocol is None  # no upgrade
    assert transport.eof_written  # closing
    assert capacity.refused == 1
    second.connection_lost(None)

    probe, probe_transport = served.http_protocol()  # past the ceiling too: still served
    probe.data_received(b"GET /health?close HTTP/1.1\r\nHost: gw\r\n\r\n")
    await settle()
    assert probe_transport.take().startswith(b"HTTP/1.1 200 ")
    probe.connection_lost(None)
    first_transport.protocol.connection_lost(None)
    await served.finish()


@pytest.mark.parametrize("close", [True, False])
async def test_what_the_http_edge_and_proxy_expect_of_uvicorns_http(
    served: Served, close: bool
) -> None:
    http, transport = served.http_protocol()
    query = b"close" if close else b"keep"
    http.data_received(
        b"POST /%61pi/x?" + query + b" HTTP/1.1\r\nHost: gw\r\n"
        b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    )
    await settle()
    assert transport.take() == b"HTTP/1.1 100 Continue\r\n\r\n", broken(
        "uvicorn",
        "it no longer answers Expect: 100-continue itself",
        "NOT_FORWARDED_UP in adapters/proxy/forwarding.py",
    )
    http.data_received(b"ok")
    await served.finish()
    [scope] = served.app.http_scopes
    assert scope["raw_path"] == b"/%61pi/x", broken(
        "uvicorn", "scope['raw_path'] is no longer the path as sent", "HttpEdge's dispatch"
    )
    assert transport.take().startswith(b"HTTP/1.1 200 ")
    assert transport.closing is close, broken(
        "uvicorn",
        "a response's Connection: close no longer closes the connection",
        "send_json_error",
    )
    http.connection_lost(None)


async def test_uvicorn_adds_its_own_date_header(served: Served) -> None:
    server = uvicorn.Server(served.config)
    await server.on_tick(0)  # what its main loop does every tenth tick: the Date of now
    served.state = server.server_state
    http, transport = served.http_protocol()
    http.data_received(b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n")
    await served.finish()
    head = transport.take().partition(b"\r\n\r\n")[0].lower()
    assert head.count(b"\r\ndate: ") == 1, broken(
        "uvicorn",
        "it no longer adds one Date header to a response that has none",
        "NOT_FORWARDED_DOWN in adapters/proxy/forwarding.py (the backend's Date is dropped)",
    )
    http.connection_lost(None)


# -- websockets ----------------------------------------------------------------------------


def test_websockets_reads_its_line_limit_when_it_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    path = "/ws?token=" + "t" * 12_000

    def parses() -> bool:
        server = ServerProtocol()
        server.receive_data(client_handshake(path)[1])
        return any(isinstance(e, Request) and e.path == path for e in server.events_received())

    monkeypatch.setattr(websockets.http11, "MAX_LINE_LENGTH", 8192)
    assert not parses()
    allow_long_handshake_lines()
    assert websockets.http11.MAX_LINE_LENGTH == HANDSHAKE_LINE_LIMIT
    assert parses(), broken(
        "websockets",
        "websockets.http11.MAX_LINE_LENGTH is no longer read when a request is parsed",
        "allow_long_handshake_lines in adapters/server/handshake_lines.py (or set "
        "WEBSOCKETS_MAX_LINE_LENGTH)",
    )


def test_websockets_handshake_limits_sit_above_the_http_protocols() -> None:
    # The upgrade request is parsed again by websockets; past its limits uvicorn hangs, so
    # GuardedHttpProtocol must refuse first.
    assert websockets.http11.MAX_NUM_HEADERS > MAX_HEADER_COUNT, broken(
        "websockets",
        f"a handshake may have only {websockets.http11.MAX_NUM_HEADERS} headers",
        "MAX_HEADER_COUNT in adapters/server/http_protocol.py",
    )
    assert HANDSHAKE_LINE_LIMIT >= MAX_HEADER_LINE


def test_a_handshake_request_can_be_emptied() -> None:
    request = Request("/ws?token=abc", Headers({"Host": "gw"}))
    try:
        request.headers = Headers()
        request.path = ""
    except (AttributeError, dataclasses.FrozenInstanceError) as exc:
        pytest.fail(
            broken(
                "websockets",
                f"Request's path and headers are read-only ({exc})",
                "SocketControl.accepted",
            )
        )


# -- httptools -----------------------------------------------------------------------------


class ParserEvents:
    """httptools' callbacks, as uvicorn's protocol and our upstream client implement them."""

    def __init__(self, fail_in: str = "") -> None:
        self.events: list[object] = []
        self.fail_in = fail_in
        self.parser: httptools.HttpResponseParser | None = None

    def _note(self, event: object) -> None:
        if event == self.fail_in:
            raise ValueError(event)
        self.events.append(event)

    def _status(self) -> tuple[int, bool] | None:
        if self.parser is None:
            return None
        return self.parser.get_status_code(), self.parser.should_keep_alive()

    def on_message_begin(self) -> None:
        self._note("message_begin")

    def on_url(self, url: bytes) -> None:
        self._note("url")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._note("header")

    def on_headers_complete(self) -> None:
        self._note(("headers_complete", self._status()))

    def on_body(self, body: bytes) -> None:
        self._note(("body", body))

    def on_message_complete(self) -> None:
        self._note(("message_complete", self._status()))


def test_httptools_calls_the_request_callbacks_uvicorn_and_we_hook() -> None:
    events = ParserEvents()
    httptools.HttpRequestParser(events).feed_data(b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert events.events == [
        "message_begin",
        "url",
        "header",
        ("headers_complete", None),
        ("message_complete", None),
    ], broken("httptools", "its request callbacks changed", "GuardedHttpProtocol's on_* overrides")


def test_an_exception_in_a_callback_is_an_http_parser_error() -> None:
    parser = httptools.HttpRequestParser(ParserEvents(fail_in="url"))
    with pytest.raises(httptools.HttpParserError):
        parser.feed_data(b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n")


def test_httptools_response_parsing_the_upstream_client_relies_on() -> None:
    events = ParserEvents()
    events.parser = httptools.HttpResponseParser(events)
    events.parser.feed_data(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
    assert events.events == [
        "message_begin",
        "header",
        ("headers_complete", (200, True)),
        ("body", b"hi"),
        ("message_complete", (200, True)),
    ], broken(
        "httptools",
        "its response callbacks changed",
        "HttpExchange in adapters/proxy/exchange.py",
    )
    switching = ParserEvents()
    switching.parser = httptools.HttpResponseParser(switching)
    with pytest.raises(httptools.HttpParserUpgrade):
        switching.parser.feed_data(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n"
        )


# -- Litestar ------------------------------------------------------------------------------


async def test_litestar_lets_the_handler_replace_the_sockets_receive_and_send() -> None:
    async def receive() -> Message:
        return {"type": "websocket.disconnect"}

    async def send(message: Message) -> None:
        return None

    server_receive, server_send = cast(Any, receive), cast(Any, send)
    socket = WebSocket[Any, Any, Any](cast(Any, {"type": "websocket"}), server_receive, server_send)
    held = [cell.cell_contents for cell in getattr(socket.receive, "__closure__", None) or ()]
    assert any(o is socket for o in held), broken(
        "litestar",
        "WebSocket no longer wraps receive in a closure holding the socket",
        "whether serve_connection's final receive/send reassignment (adapters/http/websocket.py) "
        "is still needed",
    )
    socket.receive = server_receive
    socket.send = server_send
    assert (socket.receive, socket.send) == (server_receive, server_send), broken(
        "litestar", "WebSocket.receive/send can no longer be reassigned", "serve_connection"
    )


async def test_litestar_hands_the_servers_scope_extensions_to_the_handler() -> None:
    control = object()
    seen: list[object] = []

    @websocket("/ws")
    async def handler(socket: WebSocket[Any, Any, Any]) -> None:
        seen.append((socket.scope.get("extensions") or {}).get(SOCKET_CONTROL))
        await socket.accept()
        await socket.close()

    connect: list[Message] = [{"type": "websocket.connect"}]

    async def receive() -> Message:
        return connect.pop() if connect else {"type": "websocket.disconnect", "code": 1000}

    async def send(message: Message) -> None:
        return None

    scope: Scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "path": "/ws",
        "raw_path": b"/ws",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"gw")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 3000),
        "subprotocols": [],
        "extensions": {SOCKET_CONTROL: control},
        "state": {},
    }
    await Litestar([handler])(cast(Any, scope), cast(Any, receive), cast(Any, send))
    assert seen == [control], broken(
        "litestar",
        "the handler's WebSocket no longer sees the server's scope['extensions']",
        "serve_connection in adapters/http/websocket.py (it falls back to Litestar's "
        "receive and send without the socket control)",
    )


# -- httpx-aiohttp, aiohttp ----------------------------------------------------------------


class FailingSession:
    """What AiohttpTransport calls on its aiohttp session, failing as aiohttp fails."""

    def __init__(self, failure: Exception) -> None:
        self.failure = failure

    def request(self, **_: object) -> FailingSession:
        return self

    async def __aenter__(self) -> None:
        raise self.failure


@pytest.mark.parametrize(
    ("failure", "kind"),
    [
        (aiohttp.ServerTimeoutError("read timed out"), BackendErrorKind.TIMEOUT),
        (aiohttp.ClientOSError(111, "Connection refused"), BackendErrorKind.UNREACHABLE),
    ],
    ids=["timeout", "refused"],
)
async def test_the_aiohttp_transport_keeps_the_cause_our_error_mapping_reads(
    failure: Exception, kind: BackendErrorKind
) -> None:
    session = cast(aiohttp.ClientSession, FailingSession(failure))
    transport = AiohttpTransport(client=lambda: session)
    client = httpx.AsyncClient(base_url="http://backend.test", transport=transport)
    with pytest.raises(BackendError) as caught:
        await HttpxBackend(client).end_session("token", "s1")
    assert caught.value.kind is kind, broken(
        "httpx-aiohttp",
        f"aiohttp's {type(failure).__name__} no longer reaches httpx as the __cause__ "
        f"of the error it raises (we saw {caught.value.kind})",
        "_timed_out in adapters/backend/http.py",
    )


async def test_the_aiohttp_transport_closes_the_session_it_was_given() -> None:
    session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
    try:
        client = httpx.AsyncClient(transport=AiohttpTransport(client=session))
        await client.aclose()
        assert session.closed, broken(
            "httpx-aiohttp",
            "closing the httpx client no longer closes the aiohttp session passed as client=",
            "backend_client in app/container.py",
        )
    finally:
        await session.close()


# -- uvicorn, websockets: what the native engine (WS_ENGINE=native) still needs -------------


class HandedOver(asyncio.Protocol):
    """Stands in for the native engine's class as ``Config.ws``: notes how uvicorn builds it
    and what it is handed, in order."""

    made: ClassVar[list[HandedOver]] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.calls: list[tuple[str, object]] = []
        HandedOver.made.append(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        protocol = cast(FakeTransport, transport).protocol
        self.calls.append(("connection_made", protocol is self))

    def data_received(self, data: bytes) -> None:
        self.calls.append(("data_received", data))


async def test_uvicorn_hands_the_upgrade_over_as_the_native_engine_expects(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``NativeWebSocketProtocol`` replaces uvicorn's WebSocket protocol but is still built
    and fed by uvicorn's ``handle_websocket_upgrade``: keyword arguments ``config``,
    ``server_state``, ``app_state``; ``connection_made`` before the transport is handed
    over; then the request head rebuilt as ``GET <target> HTTP/1.1``, ``name: value`` lines
    (names lower-cased) and an empty line, in one ``data_received``; the bytes behind it
    next (the gateway's HTTP protocol)."""
    HandedOver.made = []
    monkeypatch.setattr(served.config, "ws_protocol_class", HandedOver)
    http, transport = served.http_protocol()
    assert http in served.state.connections
    _, handshake = client_handshake("/ws?token=abc")
    request_line, _, rest = handshake.partition(b"\r\n")
    behind = b"\x89\x80\x00\x00\x00\x00"  # a masked empty ping, in the same read
    http.data_received(handshake + behind)
    change = "the upgrade hand-off changed"
    recheck = "NativeWebSocketProtocol (adapters/server/native/protocol.py, handshake.py)"
    assert len(HandedOver.made) == 1, broken("uvicorn", change, recheck)
    (ws,) = HandedOver.made
    assert set(ws.kwargs) == {"config", "server_state", "app_state"}, broken(
        "uvicorn", f"{change}: built with {sorted(ws.kwargs)}", recheck
    )
    assert ws.kwargs["config"] is served.config
    assert ws.kwargs["server_state"] is served.state, broken("uvicorn", change, recheck)
    assert transport.protocol is ws
    assert http not in served.state.connections, broken(
        "uvicorn", f"{change}: the HTTP protocol stays in server_state.connections", recheck
    )
    headers = [line.split(b": ", 1) for line in rest.split(b"\r\n") if line]
    expected = request_line + b"\r\n"
    expected += b"".join(name.lower() + b": " + value + b"\r\n" for name, value in headers)
    expected += b"\r\n"
    assert ws.calls == [
        ("connection_made", False),
        ("data_received", expected),
        ("data_received", behind),
    ], broken("uvicorn", f"{change}: {ws.calls}", recheck)


def test_what_the_native_engine_reads_of_uvicorn_and_websockets(served: Served) -> None:
    """The rest of what the native engine takes from uvicorn (its config's fields, the server
    state, the helpers its scope and log lines come from, shutdown calling ``shutdown()`` on
    every connection) and from websockets (the C unmasking, the handshake's fallback)."""
    recheck = "NativeWebSocketProtocol (adapters/server/native/)"
    config = served.config
    for name in (
        "loaded",
        "loaded_app",
        "root_path",
        "asgi_version",
        "ws_max_size",
        "ws_ping_interval",
        "ws_ping_timeout",
    ):
        assert hasattr(config, name), broken("uvicorn", f"Config has no {name!r}", recheck)
    for name in ("connections", "tasks", "default_headers"):
        assert hasattr(served.state, name), broken(
            "uvicorn", f"ServerState has no {name!r}", recheck
        )
    assert issubclass(ClientDisconnected, OSError), broken(
        "uvicorn", "ClientDisconnected is no longer an OSError", recheck
    )
    assert re.search(
        r"for connection in list\(self\.server_state\.connections\):\s*connection\.shutdown\(\)",
        source_of(uvicorn.Server.shutdown),
    ), broken("uvicorn", "Server.shutdown no longer calls shutdown() on each connection", recheck)
    assert native_parser.apply_mask is websockets_speedups.apply_mask, broken(
        "websockets", "the C apply_mask is gone", "adapters/server/native/parser.py"
    )
    judged = native_handshake.judged_by_websockets(client_handshake()[1], 1 << 20)
    accepted = judged.response.status_code if judged.response is not None else None
    assert accepted == 101, broken(
        "websockets", "ServerProtocol no longer accepts a handshake as it did", recheck
    )


# -- The README beside adapters/server, these tables and the paths agree ------------------

SERVER_README: Final = PACKAGE / "adapters" / "server" / "README.md"
ROOT: Final = PACKAGE.parents[1]  # the repository: where tests/ and bench/ are


def inventory_names() -> set[str]:
    """What the tables above hold, as the README spells it: ``Class.name`` (the base's class),
    and the stand-ins' own classes."""
    names = {
        f"{sub.base.__name__}.{name}" for sub in SUBCLASSES for name in [*sub.overrides, *sub.uses]
    }
    names |= {f"{ServerProtocol.__name__}.{name}" for name in CONN_USES}
    names |= {f"{owner.__name__}.{method}" for owner, method, _, _ in CALL_SITES}
    return names | {stand_in.__name__ for stand_in in STAND_INS.values()}


def test_the_readme_lists_every_name_the_inventory_holds_and_no_other() -> None:
    spans = set(re.findall(r"`([^`\n]+)`", SERVER_README.read_text()))
    names = inventory_names()
    missing = sorted(names - spans)
    assert not missing, f"{README} has no row for {missing}: add one (where, why, which test)"
    classes = {name.partition(".")[0] for name in names if "." in name}
    unlisted = sorted(
        span for span in spans - names if "." in span and span.partition(".")[0] in classes
    )
    assert not unlisted, (
        f"{README} lists {unlisted}, which the tables in this test do not hold: add them "
        "there (so that an upgrade is checked for them), or drop the rows"
    )


def test_the_readme_names_every_test_here_and_no_other() -> None:
    named = set(re.findall(r"`(test_\w+)`", SERVER_README.read_text()))
    here = {name for name in globals() if name.startswith("test_")}
    assert not named - here, f"{README} names tests that do not exist: {sorted(named - here)}"
    # The checks' own tests (below) check this file, not a release.
    unnamed = sorted(name for name in here - named if not name.endswith("_is_reported"))
    assert not unnamed, f"{README} does not say what {unnamed} check: add them to its tables"


def test_every_path_the_readme_and_this_test_name_exists() -> None:
    texts = [SERVER_README.read_text(), source_of(sys.modules[__name__])]
    named = {path for text in texts for path in re.findall(r"[\w./]*/[\w.]+\.(?:py|md)\b", text)}
    assert named
    top = ("src/", "tests/", "bench/")
    gone = sorted(p for p in named if not ((ROOT if p.startswith(top) else PACKAGE) / p).exists())
    assert not gone, f"{gone}, named in {README} or in this test, do not exist (moved?)"


@pytest.mark.parametrize("sub", SUBCLASSES, ids=lambda sub: sub.ours.__name__)
def test_where_names_the_files_that_hold_our_code(sub: Subclass) -> None:
    files = {source_path(cls) for cls in (sub.ours, *(cls for cls, _ in sub.sources))}
    assert set(sub.where.split(", ")) == files, f"{sub.ours.__name__}: where={sub.where!r}"


# -- The checks can fail -------------------------------------------------------------------

VERSION: Final = f"uvicorn {metadata.version('uvicorn')}"


def test_a_method_gone_from_the_base_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(WebSocketsSansIOProtocol, "keepalive_timeout")
    problem = override_problem(WS_PROTOCOL, "keepalive_timeout")
    assert problem is not None
    assert VERSION in problem
    assert "'keepalive_timeout'" in problem


def test_a_changed_signature_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    def on_header(self: object, name: bytes, value: bytes, raw: bytes) -> None: ...

    monkeypatch.setattr(HttpToolsProtocol, "on_header", on_header)
    problem = override_problem(HTTP_PROTOCOL, "on_header")
    assert problem is not None
    assert VERSION in problem
    assert "raw" in problem


def test_a_changed_init_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    def init(self: object, config: object, server_state: object) -> None: ...

    monkeypatch.setattr(WebSocketsSansIOProtocol, "__init__", init)
    problem = override_problem(WS_PROTOCOL, "__init__")
    assert problem is not None
    assert VERSION in problem


def test_an_attribute_no_longer_set_is_reported(bases: dict[type[Any], object]) -> None:
    ws = bases[WebSocketsSansIOProtocol]
    without = SimpleNamespace(**{k: v for k, v in vars(ws).items() if k != "pong_timer"})
    problem = exists_problem(WS_PROTOCOL, "pong_timer", without)
    assert problem is not None
    assert VERSION in problem
    assert "pong_timer" in problem


def test_a_name_of_ours_that_uvicorn_takes_up_is_reported(
    monkeypatch: pytest.MonkeyPatch, bases: dict[type[Any], object]
) -> None:
    monkeypatch.setattr(WebSocketsSansIOProtocol, "_stash", None, raising=False)
    problems = name_problems(WS_PROTOCOL, bases[WebSocketsSansIOProtocol])
    assert any("'_stash'" in p and VERSION in p for p in problems), problems


def test_a_use_missing_from_the_inventory_is_reported(bases: dict[type[Any], object]) -> None:
    trimmed = dataclasses.replace(
        WS_PROTOCOL, uses={k: v for k, v in WS_PROTOCOL.uses.items() if k != "last_ping_rtt"}
    )
    problems = name_problems(trimmed, bases[WebSocketsSansIOProtocol])
    assert any("last_ping_rtt" in p and "does not list" in p for p in problems), problems


def test_a_new_call_on_a_stand_in_is_reported() -> None:
    source = source_of(websockets_sansio_impl) + "\n        self.queue.qsize()\n"
    [problem] = stand_in_problems(source)
    assert VERSION in problem
    assert "qsize" in problem


def test_a_call_site_gone_is_reported() -> None:
    owner, method, _, ours = CALL_SITES[0]
    problem = call_site_problem(owner, method, r"self\.no_such_call\(\)", ours)
    assert problem is not None
    assert VERSION in problem
