"""The AsyncAPI document of the WebSocket protocol (adapters/http/asyncapi/), without a
server: its structure against what AsyncAPI 3.0 requires, every example decoded with the very
msgspec type the gateway decodes (or encodes) that message with and checked against its
message's JSON Schema, refusals of the decoder refused by the schema too, and the message
types equal to those docs/protocol.md §2 lists.

No jsonschema library is installed: tests/json_schema.py checks the subset msgspec emits (the
OpenAPI test uses it too) and fails on any keyword it does not know rather than passing it.
tests/integration/test_asyncapi.py uses it on what a real gateway sends.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any, Final, get_args

import msgspec
import pytest

from kalami_gateway import __version__
from kalami_gateway.adapters.http import ASYNCAPI_PATH, asyncapi_document
from kalami_gateway.adapters.http.asyncapi import (
    BINARY,
    BINARY_FRAME,
    JSON,
    RECEIVE,
    SEND,
    wire_type,
)
from kalami_gateway.domain.protocol import (
    CLIENT_MESSAGE_TYPES,
    ClientMessage,
    ErrorCode,
    Outbound,
    ProtocolError,
    ServerMessage,
    decode_client_message,
    encode_server_message,
)
from tests.json_schema import problems, references, resolve

Json = Any
PROTOCOL_MD: Final = Path(__file__).resolve().parents[3] / "docs" / "protocol.md"
DOCUMENT: Final = asyncapi_document()


def matching_messages(document: Json, operation: str, value: Json, binary: bool) -> list[str]:
    """The messages of ``operation`` (``send``/``receive``) that ``value`` (a text frame's JSON,
    or a binary frame's bytes in base64) is valid against: AsyncAPI wants exactly one."""
    found = []
    for ref in document["operations"][operation]["messages"]:
        message = resolve(document, resolve(document, ref["$ref"])["$ref"])
        if (message.get("contentType", document["defaultContentType"]) == BINARY) != binary:
            continue
        if not any(problems(document, message["payload"], value)):
            found.append(ref["$ref"].rsplit("/", 1)[1])
    return found


def test_the_checker_refuses_what_the_schemas_forbid() -> None:
    """The checker itself, on the keywords msgspec emits: a checker that passes everything
    would make every other assertion here empty."""
    document = {"components": {"schemas": {"P": {"type": "object", "required": ["a"]}}}}
    p = {"$ref": "#/components/schemas/P"}
    assert not list(problems(document, p, {"a": 1}))
    assert list(problems(document, p, {"b": 1}))
    assert list(problems(document, p, [1]))
    maybe = {"anyOf": [{"type": "string", "maxLength": 2}, {"type": "null"}]}
    assert not list(problems(document, maybe, None))
    assert not list(problems(document, maybe, "ab"))
    assert list(problems(document, maybe, "abc"))
    assert list(problems(document, maybe, 1))
    assert list(problems(document, {"type": "string", "minLength": 1}, ""))
    assert list(problems(document, {"type": "integer"}, True))
    assert list(problems(document, {"type": "integer"}, 1.5))
    assert list(problems(document, {"enum": ["a"]}, "b"))
    assert list(problems(document, {"enum": [1]}, True))
    assert list(problems(document, {"type": "integer", "minimum": 0}, -1))
    assert list(problems(document, {"type": "string", "contentEncoding": "base64"}, "no!"))
    assert not list(problems(document, {"type": "string", "contentEncoding": "base64"}, "AA=="))
    strings = {"type": "array", "items": {"type": "string"}}
    assert list(problems(document, strings, ["a", 1]))
    assert list(problems(document, {"properties": {"a": {"type": "string"}}}, {"a": 1}))
    with pytest.raises(AssertionError, match="does not know"):
        list(problems(document, {"if": {}}, 1))


# --- the document's structure -----------------------------------------------------------------


def test_the_document_has_what_asyncapi_3_requires() -> None:
    assert DOCUMENT["asyncapi"] == "3.0.0"
    info = DOCUMENT["info"]
    assert info["title"]
    assert info["version"] == __version__
    assert DOCUMENT["defaultContentType"] == JSON
    assert list(DOCUMENT["channels"]) == ["ws"]
    channel = DOCUMENT["channels"]["ws"]
    assert channel["address"] == "/ws"
    for ref in references(DOCUMENT):
        resolve(DOCUMENT, ref)
    operations = DOCUMENT["operations"]
    assert {name: op["action"] for name, op in operations.items()} == {
        "send": "send",
        "receive": "receive",
    }
    in_operations = []
    for operation in operations.values():
        assert operation["channel"] == {"$ref": "#/channels/ws"}
        for ref in operation["messages"]:
            # An operation's messages are its channel's (AsyncAPI: a subset of them).
            assert ref["$ref"].startswith("#/channels/ws/messages/")
            in_operations.append(ref["$ref"].rsplit("/", 1)[1])
        for scheme in operation["security"]:
            assert resolve(DOCUMENT, scheme["$ref"])["type"] in ("http", "httpApiKey")
    # Every message is in exactly one operation: one direction each.
    assert sorted(in_operations) == sorted(channel["messages"])
    for name, message in DOCUMENT["components"]["messages"].items():
        assert channel["messages"][name] == {"$ref": f"#/components/messages/{name}"}
        assert "payload" in message, name
        assert message["contentType"] in (JSON, BINARY), name
    # The same document encodes as JSON and reads back unchanged (the route serves it so).
    assert msgspec.json.decode(msgspec.json.encode(DOCUMENT)) == DOCUMENT
    assert ASYNCAPI_PATH == "/schema/asyncapi.json"


def test_the_handshake_binding_names_the_three_token_ways_and_the_subprotocol() -> None:
    binding = DOCUMENT["channels"]["ws"]["bindings"]["ws"]
    assert binding["method"] == "GET"
    assert binding["bindingVersion"] == "0.1.0"
    for part in ("query", "headers"):  # the binding wants objects with properties
        assert binding[part]["type"] == "object"
    assert set(binding["query"]["properties"]) == {"token", "resume"}
    assert set(binding["headers"]["properties"]) == {"Authorization", "Sec-WebSocket-Protocol"}
    assert "kalami.v1" in binding["headers"]["properties"]["Sec-WebSocket-Protocol"]["description"]
    schemes = DOCUMENT["components"]["securitySchemes"]
    ways = {(s.get("in"), s.get("name") or s.get("scheme")) for s in schemes.values()}
    assert ways == {(None, "bearer"), ("header", "Sec-WebSocket-Protocol"), ("query", "token")}


def messages_of(operation: str) -> dict[str, Json]:
    return {
        ref["$ref"].rsplit("/", 1)[1]: resolve(DOCUMENT, resolve(DOCUMENT, ref["$ref"])["$ref"])
        for ref in DOCUMENT["operations"][operation]["messages"]
    }


def test_the_messages_are_the_types_the_gateway_decodes_and_encodes() -> None:
    sent = messages_of("send")
    received = messages_of("receive")
    text_sent = {m["name"] for m in sent.values() if m["contentType"] == JSON}
    # The decoder's own table of types, not only the union the document was made from.
    assert text_sent == set(CLIENT_MESSAGE_TYPES)
    assert [m["name"] for m in sent.values() if m["contentType"] == BINARY] == [BINARY_FRAME]
    server: tuple[type[msgspec.Struct], ...] = get_args(Outbound)
    # A Struct the gateway sends as binary frames (a reply's audio) is one binary message.
    in_binary = {cls for cls in server if cls in RECEIVE and RECEIVE[cls].binary}
    assert {name: m["contentType"] for name, m in received.items()} == {
        cls.__name__: BINARY if cls in in_binary else JSON for cls in server
    }
    text_received = {m["name"] for m in received.values() if m["contentType"] == JSON}
    assert text_received == {wire_type(cls) for cls in server if cls not in in_binary}
    for name, message in {**sent, **received}.items():
        if message["contentType"] == JSON:
            assert message["payload"] == {"$ref": f"#/components/schemas/{name}"}
        else:
            assert message["name"] == BINARY_FRAME
            assert message["payload"] == {"type": "string", "format": "binary"}


def test_every_message_has_a_summary_and_an_example() -> None:
    client: tuple[type[msgspec.Struct], ...] = get_args(ClientMessage)
    server: tuple[type[msgspec.Struct], ...] = get_args(Outbound)
    assert set(SEND) == set(client), "a client message without notes in asyncapi/sent.py"
    assert set(RECEIVE) == set(server), "a server message without notes in asyncapi/received.py"
    for name, message in DOCUMENT["components"]["messages"].items():
        assert message["summary"], name
        assert message["examples"], name
        for example in message["examples"]:
            assert example["name"]
            assert "payload" in example


def test_every_example_is_what_its_very_type_decodes() -> None:
    """A client example is decoded as the gateway decodes a text frame, into its message's
    type; a server example is exactly what the gateway encodes from the message it decodes
    to; a binary example is base64 of some bytes. Each is valid against its message's schema
    and against no other message of its operation."""
    client: dict[str, type[msgspec.Struct]] = {cls.__name__: cls for cls in get_args(ClientMessage)}
    server: dict[str, type[msgspec.Struct]] = {cls.__name__: cls for cls in get_args(ServerMessage)}
    for operation in ("send", "receive"):
        for name, message in messages_of(operation).items():
            binary = message["contentType"] == BINARY
            for example in message["examples"]:
                payload = example["payload"]
                assert matching_messages(DOCUMENT, operation, payload, binary) == [name], example
                if binary:
                    assert base64.b64decode(payload, validate=True)
                elif operation == "send":
                    decoded = decode_client_message(msgspec.json.encode(payload))
                    assert not isinstance(decoded, ProtocolError), (example, decoded)
                    assert type(decoded) is client[name]
                else:
                    produced: ServerMessage = msgspec.json.decode(
                        msgspec.json.encode(payload), type=ServerMessage
                    )
                    assert type(produced) is server[name]
                    assert msgspec.json.decode(encode_server_message(produced)) == payload


def test_error_codes_are_the_closed_list() -> None:
    description = DOCUMENT["components"]["messages"]["Error"]["description"]
    assert set(re.findall(r"`([a-z_]+)`", description)) == {code.value for code in ErrorCode}


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "start_session", "payload": {}},
        {"type": "start_session", "payload": {"profileId": ""}},
        {"type": "start_session", "payload": {"profileId": "p" * 257}},
        {"type": "start_session", "payload": {"profileId": 7}},
        {"type": "start_session", "payload": {"profileId": "p-1", "replyAudio": "mp3"}},
        {"type": "start_recording", "payload": {"format": "flac"}},
        {"type": "audio", "payload": {"format": "webm"}},
        {"type": "audio", "payload": {"audio_base64": "not base64!"}},
        {"type": "audio", "payload": {"audio_base64": "AA==", "session_id": 1.5}},
        {"type": "audio", "payload": {"audio_base64": "AA==", "session_id": ""}},
        {"type": "refresh", "payload": {}},
        {"type": "refresh", "payload": {"token": ""}},
        {"type": "ping", "payload": []},
        {"type": "stop_recording", "payload": "now"},
        {"type": "nope"},
        {"payload": {}},
        {"type": 1},
    ],
)
def test_what_the_gateway_refuses_the_document_refuses(frame: Json) -> None:
    assert isinstance(decode_client_message(msgspec.json.encode(frame)), ProtocolError)
    assert matching_messages(DOCUMENT, "send", frame, binary=False) == []


# --- docs/protocol.md, the human guide, lists the same messages -------------------------------


def documented_types(heading: str) -> tuple[set[str], int]:
    """The ``type``s in the table under ``heading`` of docs/protocol.md §2, and how many of its
    rows are binary frames."""
    text = PROTOCOL_MD.read_text()
    section = text[text.index("## 2. Messages") :]
    section = section[: section.index("\n## ", 1)]
    lines = section[section.index(f"### {heading}\n") :].splitlines()[1:]
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    rows = lines[start + 2 : end]  # past the header and its |---| line
    types = {m.group(1) for row in rows if (m := re.match(r"\| `([a-z_]+)` \|", row))}
    binary = sum(1 for row in rows if row.startswith("| *(binary frame)*"))
    assert len(types) + binary == len(rows), f"a row of {heading!r} names no type: {rows}"
    return types, binary


def test_docs_protocol_md_lists_the_documents_messages() -> None:
    for heading, operation in (("Client → gateway", "send"), ("Gateway → client", "receive")):
        messages = messages_of(operation).values()
        text = {m["name"] for m in messages if m["contentType"] == JSON}
        binary = sum(1 for m in messages if m["contentType"] == BINARY)
        assert documented_types(heading) == (text, binary), heading
