"""The AsyncAPI document at /schema/asyncapi.json against a real gateway, over real sockets.

Every example of every message a client may send is sent, in a state where it is legal, and
must be accepted: answered with what its message says, never with an ``error``. Every frame the
gateway sends back, text or binary, must be valid against exactly one of the document's
``receive`` messages (the JSON Schema of its payload; a text frame also decodes into the
msgspec type of that message), and nothing else may arrive: each exchange reads exactly the
replies expected, and a ``ping`` answered by the very next frame closes the walk. The messages
no example asks for (a refusal's ``error``, a push, a resumed session, a token about to
expire) are driven too, so every ``receive`` message is seen at least once.

The JSON Schema checker is the unit test's (tests/unit/adapters/test_asyncapi.py): the subset
msgspec emits, failing on any keyword it does not know.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections import defaultdict
from typing import Any, Final

import httpx
import msgspec
from websockets.asyncio.client import ClientConnection, connect

from kalami_gateway.adapters.http import asyncapi_document
from kalami_gateway.adapters.http.asyncapi import BINARY
from kalami_gateway.domain.protocol import ServerMessage
from tests.integration.backend_server import BackendServer
from tests.integration.conftest import (
    Gateway,
    eventually,
    make_settings,
    running_gateway,
    token_for,
)
from tests.json_schema import resolve
from tests.unit.adapters.test_asyncapi import matching_messages

Json = Any
USER: Final = "ada"
PUSH_KEY: Final = "push-key-for-the-asyncapi-test-0123456789"
# What each client message is answered with, by its ``type``: the document's message names
# (its component keys), in order. Turns (``stop_recording``, ``audio``) are read by ``turn``.
ANSWERS: Final[dict[str, tuple[str, ...]]] = {
    "start_session": ("SessionStarted",),
    "start_recording": ("RecordingStarted",),
    "end_session": ("SessionEnded",),
    "ping": ("Pong",),
    "heartbeat": ("HeartbeatReply",),
    "refresh": ("Refreshed",),
}


class Client:
    """One connection whose every received frame is checked against the document."""

    def __init__(self, ws: ClientConnection, document: Json, seen: set[str]) -> None:
        self.ws = ws
        self.document = document
        self.seen = seen

    async def receive(self) -> tuple[str, Json]:
        """The next frame: the one ``receive`` message it is valid against, and its JSON (a
        binary frame: its bytes)."""
        frame = await asyncio.wait_for(self.ws.recv(), 10)
        if isinstance(frame, bytes):
            shown = base64.b64encode(frame).decode()
            names = matching_messages(self.document, "receive", shown, binary=True)
            value: Json = frame
        else:
            value = json.loads(frame)
            names = matching_messages(self.document, "receive", value, binary=False)
            decoded = msgspec.json.decode(frame, type=ServerMessage)
            assert [type(decoded).__name__] == names, (value, names)
        assert len(names) == 1, f"{value!r} is valid against {names} of the document"
        self.seen.add(names[0])
        return names[0], value

    async def expect(self, *names: str) -> list[Json]:
        values = []
        for name in names:
            got, value = await self.receive()
            assert got == name, f"expected {name}, got {got}: {value!r}"
            values.append(value)
        return values

    async def send(self, example: Json, binary: bool = False) -> None:
        if binary:
            await self.ws.send(base64.b64decode(example))
        else:
            await self.ws.send(json.dumps(example))

    async def exchange(self, example: Json) -> list[Json]:
        """Send a client example; read exactly the answers its message says."""
        await self.send(example)
        message_type = example["type"]
        assert message_type in ANSWERS, f"the walk does not know how {message_type} is answered"
        if message_type == "heartbeat" and (example.get("payload") or {}).get("pong") is True:
            return await self.nothing_more()  # an answer to the gateway's heartbeat
        return await self.expect(*ANSWERS[message_type])

    async def frame(self, example: Json) -> None:
        await self.send(example, binary=True)
        await self.expect("AudioReceived")

    async def turn(self, example: Json, binary_reply: bool) -> None:
        """A turn's replies: processing, transcription, response, then the reply's audio in
        base64, or announced and in binary frames (a session started with replyAudio binary)."""
        await self.send(example)
        await self.expect("Processing", "Transcription", "Response")
        if not binary_reply:
            await self.expect("AudioReply")
            return
        (start,) = await self.expect("AudioStart")
        frames = await self.expect(*["AudioFrames"] * start["payload"]["frames"])
        assert sum(len(frame) for frame in frames) == start["payload"]["bytes"]

    async def nothing_more(self) -> list[Json]:
        """Nothing is pending: the next frame answers a ping."""
        await self.ws.send(json.dumps({"type": "ping"}))
        return await self.expect("Pong")


def send_examples(document: Json) -> tuple[dict[str, list[Json]], list[Json]]:
    """The ``send`` examples: text ones by ``type``, and the binary frames."""
    text: dict[str, list[Json]] = defaultdict(list)
    binary: list[Json] = []
    for ref in document["operations"]["send"]["messages"]:
        message = resolve(document, resolve(document, ref["$ref"])["$ref"])
        for example in message["examples"]:
            if message["contentType"] == BINARY:
                binary.append(example["payload"])
            else:
                text[example["payload"]["type"]].append(example["payload"])
    return text, binary


async def walk_every_example(client: Client, document: Json, backend: BackendServer) -> None:
    text, frames = send_examples(document)
    sent: list[Json] = []

    def first(message_type: str) -> Json:
        return text[message_type][0]

    async def exchange(example: Json) -> None:
        sent.append(example)
        await client.exchange(example)

    async def frame(example: Json) -> None:
        sent.append(example)
        await client.frame(example)

    async def turn(example: Json, binary_reply: bool = False) -> None:
        sent.append(example)
        await client.turn(example, binary_reply)

    # Every way of starting a session, each session with a turn recorded in every frame.
    for start in text["start_session"]:
        await exchange(start)
        await exchange(first("start_recording"))
        for example in frames:
            await frame(example)
        await turn(first("stop_recording"), start["payload"].get("replyAudio") == "binary")
        await exchange(first("end_session"))
    # In one session whose replies come in JSON: every recording and every whole utterance.
    assert "replyAudio" not in first("start_session")["payload"]
    await exchange(first("start_session"))
    for start in text["start_recording"]:
        await exchange(start)
        await frame(frames[0])
        await turn(first("stop_recording"))
    for stop in text["stop_recording"]:
        await exchange(first("start_recording"))
        await frame(frames[0])
        await turn(stop)
    for audio in text["audio"]:
        session_id = audio["payload"].get("session_id")
        if session_id is not None:  # the app opened it over REST, with the same backend
            backend.sessions.add(str(session_id))
        await turn(audio)
    for index, end in enumerate(text["end_session"]):
        if index:
            await exchange(first("start_session"))
        await exchange(end)
    # Those that any state allows.
    for example in text["ping"] + text["heartbeat"]:
        await exchange(example)
    for example in text["refresh"]:
        # The example's token is a placeholder: a real one of the same user takes its place.
        sent.append(example)
        await client.exchange(
            {**example, "payload": {**example["payload"], "token": token_for(USER)}}
        )
    everything = [e for examples in text.values() for e in examples] + frames
    assert [e for e in everything if e not in sent] == [], "examples the walk does not send"
    await client.nothing_more()


async def test_every_example_is_accepted_and_everything_sent_back_is_in_the_document(
    backend: BackendServer,
) -> None:
    settings = make_settings(backend.url, push_api_key=PUSH_KEY)
    async with running_gateway(settings) as gw, httpx.AsyncClient(timeout=10) as http:
        served = await http.get(f"{gw.http}/schema/asyncapi.json")
        assert served.status_code == 200
        assert served.headers["content-type"].startswith("application/json")
        document = served.json()
        assert document == msgspec.json.decode(msgspec.json.encode(asyncapi_document()))
        index = (await http.get(f"{gw.http}/")).json()
        assert index["endpoints"]["asyncapi"] == "/schema/asyncapi.json"
        # Served beside the OpenAPI schema; every other path under /schema is still a 404.
        assert (await http.get(f"{gw.http}//schema//asyncapi.json")).json() == document
        unserved = await http.get(f"{gw.http}/schema/asyncapi.yaml")
        assert (unserved.status_code, unserved.json()["code"]) == (404, "not_found")
        seen: set[str] = set()

        ws = await connect(gw.ws(token_for(USER)))
        client = Client(ws, document, seen)
        (hello,) = await client.expect("Connected")
        await walk_every_example(client, document, backend)

        # What no example asks for: a refusal, a push, a resumed session, an expiring token.
        await ws.send(json.dumps({"type": "no_such_type"}))
        (refusal,) = await client.expect("Error")
        assert refusal["payload"]["code"] == "unknown_type"
        pushed = await http.post(
            f"{gw.http}/internal/push",
            json={"userId": USER, "payload": {"kind": "streak", "days": 7}},
            headers={"Authorization": f"Bearer {PUSH_KEY}"},
        )
        assert pushed.status_code == 202
        await client.expect("Push")
        await client.send({"type": "start_session", "payload": {"profileId": "p-1"}})
        await client.expect("SessionStarted")
        await resume_after_a_drop(gw, ws, hello["payload"]["resumeToken"], document, seen)
        await token_about_to_expire(gw, document, seen)

    receive = document["operations"]["receive"]["messages"]
    assert seen == {ref["$ref"].rsplit("/", 1)[1] for ref in receive}


async def parked(gw: Gateway) -> bool:
    async with httpx.AsyncClient(timeout=10) as http:
        stats = (await http.get(f"{gw.http}/stats")).json()
    return bool(stats["sessions"]["parked"])


async def resume_after_a_drop(
    gw: Gateway, ws: ClientConnection, resume_token: str, document: Json, seen: set[str]
) -> None:
    """The connection goes with its session open; the next carries it on."""
    await ws.close()
    await eventually(lambda: parked(gw))
    async with connect(f"{gw.ws(token_for(USER))}&resume={resume_token}") as again:
        client = Client(again, document, seen)
        await client.expect("Connected", "SessionResumed")
        await client.exchange({"type": "end_session"})
        await client.nothing_more()


async def token_about_to_expire(gw: Gateway, document: Json, seen: set[str]) -> None:
    """A token within TOKEN_EXPIRY_WARNING (a minute) of its expiry is warned of at once."""
    async with connect(gw.ws(token_for(USER, ttl=30))) as ws:
        client = Client(ws, document, seen)
        await client.expect("Connected", "TokenExpiring")
        await client.nothing_more()
