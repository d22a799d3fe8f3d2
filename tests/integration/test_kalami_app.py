"""The gateway between the Kalami app and a backend built as the real one is, driven exactly as
the app drives it: login and sessions over REST through ``/api``, each utterance one ``audio``
message naming its session, heartbeats both ways, sessions ended over REST."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.integration.conftest import SECRET, Gateway, make_settings, running_gateway
from tests.integration.kalami_backend import CORRECTION, KalamiBackend, running_kalami


class AppSocket:
    """The app's WebSocket client as it behaves: every ``heartbeat`` it receives is answered
    with ``{"pong": true}`` and not passed on; everything else is handed to the screen."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.screen: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.heartbeats_received = 0
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for frame in self.ws:
                message = json.loads(frame)
                if message["type"] == "heartbeat":
                    self.heartbeats_received += 1
                    await self.ws.send(json.dumps({"type": "heartbeat", "payload": {"pong": True}}))
                    continue
                await self.screen.put(message)

    async def heartbeat(self) -> None:
        """What the app sends every 30 s."""
        await self.ws.send(json.dumps({"type": "heartbeat", "payload": {"ping": True}}))

    async def say(self, audio: bytes, session_id: str) -> None:
        """A finished recording, as the app sends it."""
        payload = {
            "audio_base64": base64.b64encode(audio).decode(),
            "format": "m4a",
            "session_id": session_id,
        }
        await self.ws.send(json.dumps({"type": "audio", "payload": payload}))

    async def next(self, within: float = 10.0) -> dict[str, Any]:
        return await asyncio.wait_for(self.screen.get(), within)

    async def turn(self) -> list[dict[str, Any]]:
        """What the screen gets up to the turn's ``response`` (or ``error``), then its audio."""
        got = [await self.next()]
        while got[-1]["type"] not in ("response", "error"):
            got.append(await self.next())
        if got[-1]["type"] == "response":
            with contextlib.suppress(TimeoutError):
                got.append(await self.next(within=0.5))
        return got

    async def close(self) -> None:
        await self.ws.close(1000, "Client disconnect")
        await self._reader


class Learner:
    """The app's REST side (services/api.ts) through the gateway's /api."""

    def __init__(self, gateway: Gateway, email: str) -> None:
        self.gateway = gateway
        self.email = email
        self.http = httpx.AsyncClient(base_url=f"{gateway.http}/api", timeout=10)
        self.token = ""

    async def sign_up(self) -> None:
        registered = await self.http.post(
            "/auth/register",
            json={"email": self.email, "password": "pw-123456", "native_language": "en"},
        )
        assert registered.status_code == 201, registered.text
        login = await self.http.post(
            "/auth/login", data={"username": self.email, "password": "pw-123456"}
        )
        assert login.status_code == 200, login.text
        self.token = login.json()["access_token"]
        self.http.headers["Authorization"] = f"Bearer {self.token}"

    async def start_session(self) -> str:
        created = await self.http.post(
            "/conversations/sessions", json={"profile_id": "p-1", "difficulty_level": "beginner"}
        )
        assert created.status_code == 201, created.text
        session_id: str = created.json()["id"]
        return session_id

    async def end_session(self, session_id: str) -> httpx.Response:
        return await self.http.post(f"/conversations/sessions/{session_id}/end")

    @contextlib.asynccontextmanager
    async def socket(self) -> AsyncIterator[AppSocket]:
        async with connect(self.gateway.ws(self.token), max_size=None) as ws:
            app = AppSocket(ws)
            connected = await app.next()
            assert connected["type"] == "connected"
            try:
                yield app
            finally:
                await app.close()


@pytest.fixture
async def kalami() -> AsyncIterator[KalamiBackend]:
    async with running_kalami(SECRET) as backend:
        yield backend


@pytest.fixture
async def gateway(kalami: KalamiBackend) -> AsyncIterator[Gateway]:
    # Resumable sessions on, with a short grace: the gateway must still never end the app's.
    settings = make_settings(kalami.url, resume_grace_ms=300)
    async with running_gateway(settings) as gw:
        yield gw


@pytest.fixture
async def learner(gateway: Gateway) -> AsyncIterator[Learner]:
    made = Learner(gateway, "ana@example.com")
    await made.sign_up()
    yield made
    await made.http.aclose()


async def test_a_learner_holds_voice_turns_as_the_app_does(
    kalami: KalamiBackend, learner: Learner
) -> None:
    session_id = await learner.start_session()
    recordings = [os.urandom(48_000), os.urandom(30_000)]
    async with learner.socket() as app:
        for audio in recordings:
            await app.say(audio, session_id)
            got = await app.turn()
            assert [m["type"] for m in got] == ["processing", "transcription", "response", "audio"]
            digest = hashlib.sha256(audio).hexdigest()[:12]
            assert got[1]["payload"] == {
                "text": f"I goed to the market ({len(audio)} bytes, sha {digest})",
                "is_final": True,
            }
            assert got[2]["payload"] == {
                "text": "Nice! What did you buy there?",
                "grammar_corrections": [CORRECTION],  # every key the backend sent
                "vocabulary_introduced": ["market"],
            }
            assert base64.b64decode(got[3]["payload"]["audio_base64"]).startswith(b"ID3")
    assert [(t.session_id, t.filename, t.content_type, t.audio) for t in kalami.turns] == [
        (session_id, "recording.m4a", "audio/mp4", audio) for audio in recordings
    ]
    ended = await learner.end_session(session_id)
    assert ended.status_code == 200
    assert ended.json()["ended_at"] is not None
    await asyncio.sleep(1.5)  # past the resume grace and a sweep or more
    assert kalami.ended == [(session_id, kalami.user_id(learner.email))]  # the app's end only


async def test_the_gateway_never_ends_a_session_it_did_not_start(
    kalami: KalamiBackend, learner: Learner
) -> None:
    session_id = await learner.start_session()
    kalami.turn_seconds = 1.0
    async with learner.socket() as app:
        await app.say(os.urandom(1000), session_id)
        assert (await app.next())["type"] == "processing"
        # The app goes away mid-turn (the phone locks), then comes back.
    await asyncio.sleep(1.5)
    assert kalami.ended == []
    kalami.turn_seconds = 0.0
    async with learner.socket() as app:
        await app.say(os.urandom(1000), session_id)
        assert [m["type"] for m in await app.turn()][-2:] == ["response", "audio"]
    await asyncio.sleep(1.0)
    assert kalami.ended == []


async def test_heartbeats_both_ways_are_one_exchange_each(learner: Learner) -> None:
    async with learner.socket() as app:
        for _ in range(3):
            await app.heartbeat()
        await asyncio.sleep(1.0)
        # Three app heartbeats, three answers; the app's answers to them are not answered.
        assert app.heartbeats_received == 3
        assert app.screen.empty()


async def test_a_90_second_recording_in_one_message_with_the_default_limits(
    kalami: KalamiBackend, learner: Learner
) -> None:
    audio = os.urandom(90 * 128_000 // 8)  # 90 s of 128 kbit/s AAC: 1.9 MB as base64
    session_id = await learner.start_session()
    async with learner.socket() as app:
        await app.say(audio, session_id)
        assert [m["type"] for m in await app.turn()][-2:] == ["response", "audio"]
    assert kalami.turns[-1].audio == audio


async def test_a_reply_with_unexpected_fields_still_delivers_the_turn(
    kalami: KalamiBackend, learner: Learner
) -> None:
    kalami.reply_extra = {
        "corrections": [CORRECTION, "not an object", {"original": "x", "note": 1}],
        "vocabulary_introduced": [{"word": "market"}],
        "assistant_audio_base64": "%%% not base64",
        "detected_level": "A2",
    }
    session_id = await learner.start_session()
    async with learner.socket() as app:
        await app.say(os.urandom(2000), session_id)
        got = await app.turn()
    assert [m["type"] for m in got] == ["processing", "transcription", "response"]
    assert got[2]["payload"]["grammar_corrections"] == [CORRECTION, {"original": "x", "note": 1}]
    assert got[2]["payload"]["vocabulary_introduced"] == []


async def test_another_learners_session_is_refused_by_the_backend(
    kalami: KalamiBackend, gateway: Gateway, learner: Learner
) -> None:
    theirs = await learner.start_session()
    mallory = Learner(gateway, "mallory@example.com")
    await mallory.sign_up()
    try:
        async with mallory.socket() as app:
            await app.say(os.urandom(500), theirs)
            got = await app.turn()
            assert [m["type"] for m in got] == ["processing", "error"]
            assert "404" in got[1]["payload"]["message"]
            # One turn at a time, and the connection carries on.
            await app.say(os.urandom(500), await mallory.start_session())
            assert [m["type"] for m in await app.turn()][-2:] == ["response", "audio"]
    finally:
        await mallory.http.aclose()
    assert [t.session_id for t in kalami.turns] != [theirs]


async def test_an_ended_session_is_the_backends_400_as_an_error(learner: Learner) -> None:
    session_id = await learner.start_session()
    assert (await learner.end_session(session_id)).status_code == 200
    async with learner.socket() as app:
        await app.say(os.urandom(500), session_id)
        got = await app.turn()
    assert got[-1]["type"] == "error"
    assert "Session has ended" in got[-1]["payload"]["message"]


async def test_a_token_expiring_mid_turn_gets_its_reply_then_4003(
    kalami: KalamiBackend, learner: Learner
) -> None:
    session_id = await learner.start_session()
    learner.token = kalami.token(kalami.user_id(learner.email), minutes=2 / 60)  # 2 s left
    kalami.turn_seconds = 3.0
    async with connect(learner.gateway.ws(learner.token)) as ws:
        app = AppSocket(ws)
        assert (await app.next())["type"] == "connected"
        await app.say(os.urandom(800), session_id)
        got = [m["type"] for m in await app.turn() if m["type"] != "token_expiring"]
        assert got == ["processing", "transcription", "response", "audio"]
        await asyncio.wait_for(app._reader, 5)
        assert ws.close_code == 4003


async def test_a_session_parked_past_its_tokens_expiry_is_ended_with_a_bearer_it_accepts(
    kalami: KalamiBackend, learner: Learner
) -> None:
    """The seed protocol's own session, its token lapsing while connected (4003): parked, and
    when the grace lapses ended with the learner's claims signed again — the backend checks
    the bearer as the real one does, and an expired one would be 401 every time."""
    user_id = kalami.user_id(learner.email)
    token = kalami.token(user_id, minutes=2 / 60)
    async with connect(learner.gateway.ws(token)) as ws:
        assert json.loads(await ws.recv())["type"] == "connected"
        await ws.send(json.dumps({"type": "start_session", "payload": {"profileId": "p-1"}}))
        started = json.loads(await ws.recv())
        assert started["type"] == "session_started"
        with contextlib.suppress(ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == 4003
    session_id = started["payload"]["id"]
    for _ in range(100):
        if kalami.ended:
            break
        await asyncio.sleep(0.05)
    assert kalami.ended == [(session_id, user_id)]
    assert not [path for path in kalami.refused if path.endswith("/end")]
