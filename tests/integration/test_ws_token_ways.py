"""Tokens out of the URL and protocol versions by subprotocol (issue 26, items 3 and 4), over
real sockets: a token comes as ``?token=``, ``Authorization: Bearer`` or a ``bearer.<token>``
entry of ``Sec-WebSocket-Protocol`` (of several, the first in that order), under the same
4001/4002 rules; the gateway answers ``kalami.v1`` when it is offered, nothing when nothing
is, and never the bearer entry."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from tests.integration.backend_server import BackendServer
from tests.integration.conftest import (
    SECRET,
    WS_ENGINE,
    Gateway,
    closed_with,
    eventually,
    make_settings,
    recv_json,
    running_gateway,
    token_for,
)
from tests.integration.kalami_backend import KalamiBackend, running_kalami
from tests.integration.test_kalami_app import AppSocket, Learner
from tests.integration.test_voice import make_wav, run_cli
from tests.integration.ws_engines import (
    assert_nothing_of_the_handshake_kept,
    server_side_connections,
)

V1 = Subprotocol("kalami.v1")


def bearer(token: str) -> Subprotocol:
    return Subprotocol(f"bearer.{token}")


def answered(ws: ClientConnection) -> list[str]:
    """Every Sec-WebSocket-Protocol value of the gateway's 101."""
    assert ws.response is not None
    return ws.response.headers.get_all("Sec-WebSocket-Protocol")


# One way each: (query token or None, extra headers, subprotocols offered).
Way = tuple[str | None, dict[str, str], list[Subprotocol]]


def by_query(token: str) -> Way:
    return token, {}, []


def by_header(token: str) -> Way:
    return None, {"Authorization": f"Bearer {token}"}, []


def by_subprotocol(token: str) -> Way:
    return None, {}, [V1, bearer(token)]


WAYS = {"query": by_query, "header": by_header, "subprotocol": by_subprotocol}


def opened(gateway: Gateway, way: Way) -> connect:
    query, headers, offered = way
    return connect(gateway.ws(query), additional_headers=headers, subprotocols=offered or None)


async def test_a_token_in_an_authorization_header_connects(gateway: Gateway) -> None:
    token = token_for("header-user")
    async with connect(gateway.ws(), additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        hello = await recv_json(ws)
        assert hello["type"] == "connected"
        assert answered(ws) == []  # nothing offered, nothing answered
        await ws.send('{"type":"ping"}')
        assert (await recv_json(ws))["type"] == "pong"


@pytest.mark.parametrize("order", ["version first", "token first"])
async def test_a_token_in_the_subprotocols_connects_and_only_kalami_v1_is_answered(
    gateway: Gateway, order: str
) -> None:
    token = token_for("browser-user")
    offered = [V1, bearer(token)] if order == "version first" else [bearer(token), V1]
    async with connect(gateway.ws(), subprotocols=offered) as ws:
        assert (await recv_json(ws))["type"] == "connected"
        assert answered(ws) == ["kalami.v1"]
        assert ws.subprotocol == "kalami.v1"
        assert ws.response is not None
        assert token not in str(ws.response.headers)


async def test_a_bearer_entry_alone_is_read_but_never_echoed(gateway: Gateway) -> None:
    """Answering with no subprotocol makes a browser fail the handshake (docs/protocol.md §1:
    browsers must offer kalami.v1 too); a native client that offers only the token is let in."""
    token = token_for("native-user")
    async with connect(gateway.ws(), subprotocols=[bearer(token)]) as ws:
        assert (await recv_json(ws))["type"] == "connected"
        assert answered(ws) == []
        assert ws.subprotocol is None


@pytest.mark.parametrize("way", list(WAYS))
@pytest.mark.parametrize(
    "bad",
    [
        "not-a-token",
        jwt.encode({"sub": "u", "exp": int(time.time()) + 600}, "x" * 64, algorithm="HS256"),
        jwt.encode({"sub": "u", "exp": int(time.time()) - 60}, SECRET, algorithm="HS256"),
    ],
    ids=["garbage", "wrong-secret", "expired"],
)
async def test_a_bad_token_closes_4002_whichever_way_it_came(
    gateway: Gateway, way: str, bad: str
) -> None:
    async with opened(gateway, WAYS[way](bad)) as ws:
        assert await closed_with(ws) == (4002, "Invalid token")


@pytest.mark.parametrize(
    "way",
    [
        (None, {}, []),
        ("", {}, []),
        (None, {"Authorization": "Bearer"}, []),
        (None, {"Authorization": "Basic dXNlcjpwYXNz"}, []),  # not a bearer token: ignored
        (None, {}, [V1]),
        (None, {}, [V1, Subprotocol("bearer.")]),
    ],
    ids=["nothing", "empty-query", "empty-bearer", "basic", "version-only", "empty-entry"],
)
async def test_no_token_any_way_closes_4001(gateway: Gateway, way: Way) -> None:
    async with opened(gateway, way) as ws:
        assert await closed_with(ws) == (4001, "Authentication required")


@pytest.mark.parametrize(
    ("first", "second"), [("query", "header"), ("query", "subprotocol"), ("header", "subprotocol")]
)
async def test_of_a_token_sent_two_ways_the_first_in_a_fixed_order_is_judged(
    gateway: Gateway, first: str, second: str
) -> None:
    """``?token=``, then ``Authorization: Bearer``, then a ``bearer.`` entry: the one that
    wins is judged by the same rules, the other is not looked at."""
    good, bad = token_for("alice"), "not-a-token"
    for winner, loser, verdict in ((good, bad, "connected"), (bad, good, "4002")):
        query_a, headers_a, offered_a = WAYS[first](winner)
        query_b, headers_b, offered_b = WAYS[second](loser)
        both: Way = (query_a or query_b, {**headers_a, **headers_b}, offered_a + offered_b)
        async with opened(gateway, both) as ws:
            if verdict == "connected":
                assert (await recv_json(ws))["type"] == "connected"
            else:
                assert await closed_with(ws) == (4002, "Invalid token")


async def test_of_two_tokens_one_header_way_the_first_is_judged(gateway: Gateway) -> None:
    good, bad = token_for("alice"), "not-a-token"
    async with connect(gateway.ws(), subprotocols=[V1, bearer(good), bearer(bad)]) as ws:
        assert (await recv_json(ws))["type"] == "connected"
    headers = [("Authorization", f"Bearer {bad}"), ("Authorization", f"Bearer {good}")]
    async with connect(gateway.ws(), additional_headers=headers) as ws:
        assert await closed_with(ws) == (4002, "Invalid token")


async def test_kalami_v1_with_the_query_token_is_answered(gateway: Gateway) -> None:
    async with connect(gateway.ws(token_for("alice")), subprotocols=[V1]) as ws:
        assert (await recv_json(ws))["type"] == "connected"
        assert answered(ws) == ["kalami.v1"]


async def test_nothing_offered_is_answered_as_it_always_was(gateway: Gateway) -> None:
    async with connect(gateway.ws(token_for("alice"))) as ws:
        assert (await recv_json(ws))["type"] == "connected"
        assert answered(ws) == []
        assert ws.subprotocol is None


async def test_a_version_the_gateway_does_not_speak_is_answered_with_none(
    gateway: Gateway,
) -> None:
    async with connect(
        gateway.ws(token_for("alice")), subprotocols=[Subprotocol("kalami.v9")]
    ) as ws:
        assert (await recv_json(ws))["type"] == "connected"
        assert answered(ws) == []


@pytest.mark.parametrize("way", ["header", "subprotocol"])
async def test_the_seed_protocol_holds_a_turn_and_the_backend_gets_the_token(
    gateway: Gateway, backend: BackendServer, way: str
) -> None:
    """The token that came by a header way is the connection's: the backend gets it."""
    token = token_for("seed-user")
    async with opened(gateway, WAYS[way](token)) as ws:
        assert (await recv_json(ws))["type"] == "connected"
        await ws.send('{"type":"start_session","payload":{"profileId":"p-1"}}')
        session_id = (await recv_json(ws))["payload"]["id"]
        await ws.send('{"type":"start_recording","payload":{"format":"wav"}}')
        assert (await recv_json(ws))["type"] == "recording_started"
        audio = os.urandom(3200)
        await ws.send(audio)
        assert (await recv_json(ws))["type"] == "audio_received"
        await ws.send('{"type":"stop_recording"}')
        replies = [await recv_json(ws)]
        while replies[-1]["type"] not in ("audio", "error"):
            replies.append(await recv_json(ws))
    assert [r["type"] for r in replies] == ["processing", "transcription", "response", "audio"]
    [upload] = backend.uploads
    assert (upload.audio, upload.session_id) == (audio, session_id)
    assert upload.authorization == f"Bearer {token}"


@pytest.fixture
async def kalami() -> AsyncIterator[KalamiBackend]:
    async with running_kalami(SECRET) as made:
        yield made


@contextlib.asynccontextmanager
async def app_socket(gateway: Gateway, token: str) -> AsyncIterator[AppSocket]:
    """The app's socket, its token sent as the issue asks a browser to (kalami.v1 answered)."""
    async with connect(gateway.ws(), subprotocols=[V1, bearer(token)], max_size=None) as ws:
        assert answered(ws) == ["kalami.v1"]
        app = AppSocket(ws)
        try:
            assert (await app.next())["type"] == "connected"
            yield app
        finally:
            await app.close()


async def test_the_apps_dialect_is_unchanged_over_kalami_v1(kalami: KalamiBackend) -> None:
    async with running_gateway(make_settings(kalami.url)) as gw:
        learner = Learner(gw, "ana@example.com")
        try:
            await learner.sign_up()
            session_id = await learner.start_session()
            audio = os.urandom(20_000)
            async with app_socket(gw, learner.token) as app:
                await app.say(audio, session_id)
                got = await app.turn()
        finally:
            await learner.http.aclose()
    assert [m["type"] for m in got] == ["processing", "transcription", "response", "audio"]
    digest = hashlib.sha256(audio).hexdigest()[:12]
    assert got[1]["payload"]["text"] == f"I goed to the market ({len(audio)} bytes, sha {digest})"
    assert base64.b64decode(got[3]["payload"]["audio_base64"]).startswith(b"ID3")
    assert [t.session_id for t in kalami.turns] == [session_id]


@pytest.mark.parametrize("way", ["header", "subprotocol"])
async def test_an_accepted_connection_keeps_no_header_or_subprotocol_token(
    backend: BackendServer, way: str
) -> None:
    """SocketControl.accepted() lets go of the handshake (issue 15's memory drop): the
    Authorization header and the subprotocol list go with the rest, on the engine the suites
    run on (``ws_engines.py``: where each engine would keep them)."""
    token = token_for("forgetful")
    async with (
        running_gateway(make_settings(backend.url)) as gw,
        opened(gw, WAYS[way](token)) as ws,
    ):
        assert (await recv_json(ws))["type"] == "connected"
        await eventually(lambda: len(server_side_connections(WS_ENGINE)) == 1)
        (protocol,) = server_side_connections(WS_ENGINE)
        assert_nothing_of_the_handshake_kept(protocol, token)
        await ws.send('{"type":"ping"}')
        assert (await recv_json(ws))["type"] == "pong"


async def test_no_token_reaches_the_log_whichever_way_it_came(
    backend: BackendServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """At debug, uvicorn logs every handshake header: the Authorization value and the
    bearer entry are masked like ``?token=``."""
    tokens = [token_for(f"logged-{n}") for n in range(3)]
    settings = make_settings(backend.url, log_level="debug", log_format="json")
    async with running_gateway(settings) as gw:
        ways: list[dict[str, Any]] = [
            {"uri": gw.ws(tokens[0])},
            {"uri": gw.ws(), "additional_headers": {"Authorization": f"Bearer {tokens[1]}"}},
            {"uri": gw.ws(), "subprotocols": [V1, bearer(tokens[2])]},
        ]
        for way in ways:
            async with connect(**way) as ws:
                assert (await recv_json(ws))["type"] == "connected"
    out = capsys.readouterr()
    logged = out.out + out.err
    assert "Sec-WebSocket-Protocol" in logged  # the handshake was logged at debug...
    for token in tokens:
        assert token not in logged  # ...without a token
    assert "bearer.[redacted]" in logged


class HandshakeRecorder:
    """A server that reads one request head, keeps it and hangs up: what a client sent."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> HandshakeRecorder:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/ws"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            self.heads.append(await reader.readuntil(b"\r\n\r\n"))
        writer.close()


async def test_talk_sends_its_token_in_an_authorization_header_not_the_url(
    tmp_path: Path,
) -> None:
    make_wav(tmp_path / "hello.wav")
    token = token_for("talker")
    async with HandshakeRecorder() as recorder:
        code, _, err = await run_cli(
            "talk", "--file", "hello.wav", "--url", recorder.url, "--token", token, cwd=tmp_path
        )
    assert code == 1  # the recorder never answers
    assert token not in err
    [head] = recorder.heads
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    assert request_line == "GET /ws HTTP/1.1"
    headers = [line.lower() for line in header_lines if line]
    assert f"authorization: bearer {token}".lower() in headers
    assert "sec-websocket-protocol: kalami.v1" in headers
