"""The backend's turn reply is read liberally: a turn is never lost to a field it did not
expect, and corrections reach the client with every key the backend sent."""

from __future__ import annotations

import json
import logging
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kalami_gateway.adapters.backend.replies import read_turn_reply
from kalami_gateway.domain import protocol as p
from kalami_gateway.domain import session as s
from kalami_gateway.domain.ports import BackendError, BackendErrorKind

PROCESSING = s.SessionState(s.Phase.PROCESSING, "s1", "prof", None)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def relayed(body: dict[str, Any]) -> list[dict[str, Any]]:
    """What the client gets for a 200 with this body: the messages, as JSON on the wire."""
    reply = read_turn_reply(json.dumps(body).encode(), 200)
    event = s.TurnSucceeded(
        reply.user_text,
        reply.assistant_text,
        reply.corrections,
        reply.vocabulary_introduced,
        reply.assistant_audio_base64,
    )
    decision = s.decide(PROCESSING, event, s.Limits(max_audio_bytes=1))
    return [
        json.loads(p.encode_kept(e.message))  # a text frame's JSON, as bytes
        for e in decision.effects
        if isinstance(e, s.Send)
    ]


@given(
    user_text=st.text(),
    assistant_text=st.text(),
    rest=st.dictionaries(st.text(), json_values, max_size=6),
)
@settings(max_examples=300, deadline=None)
def test_any_object_with_both_texts_gives_transcription_and_response(
    user_text: str, assistant_text: str, rest: dict[str, Any]
) -> None:
    body = {**rest, "user_text": user_text, "assistant_text": assistant_text}
    messages = relayed(body)
    assert [m["type"] for m in messages[:2]] == ["transcription", "response"]
    assert messages[0]["payload"]["text"] == user_text
    assert messages[1]["payload"]["text"] == assistant_text
    corrections = body.get("corrections")
    if isinstance(corrections, list):
        assert messages[1]["payload"]["grammar_corrections"] == [
            c for c in corrections if isinstance(c, dict)
        ]


def test_a_correction_keeps_every_key_the_backend_sent() -> None:
    correction = {
        "original": "I goed",
        "corrected": "I went",
        "explanation": "irregular verb",
        "category": "verb_tense",
        "severity": 2,
    }
    [_, response, _] = relayed(
        {
            "user_text": "I goed",
            "assistant_text": "Where?",
            "corrections": [correction],
            "vocabulary_introduced": ["market"],
            "assistant_audio_base64": "AAAA",
        }
    )
    assert response["payload"] == {
        "text": "Where?",
        "grammar_corrections": [correction],
        "vocabulary_introduced": ["market"],
    }


@pytest.mark.parametrize(
    ("extra", "dropped"),
    [
        ({"vocabulary_introduced": "market"}, "vocabulary_introduced"),
        ({"vocabulary_introduced": ["ok", 3, None]}, "vocabulary_introduced (2 not a string)"),
        ({"corrections": {"original": "a"}}, "corrections"),
        ({"corrections": ["just a string", {"original": "a"}]}, "corrections (1 not an object)"),
        ({"assistant_audio_base64": "not base64!"}, "assistant_audio_base64"),
        ({"assistant_audio_base64": 12}, "assistant_audio_base64"),
    ],
)
def test_a_malformed_optional_field_is_dropped_with_one_warning(
    extra: dict[str, Any], dropped: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        reply = read_turn_reply(
            msgspec.json.encode({"user_text": "u", "assistant_text": "a", **extra}), 200
        )
    assert (reply.user_text, reply.assistant_text) == ("u", "a")
    [record] = [r for r in caplog.records if r.getMessage() == "backend_reply_fields_dropped"]
    assert record.fields == [dropped]  # type: ignore[attr-defined]
    assert reply.vocabulary_introduced in ([], ["ok"])
    assert all(isinstance(c, dict) for c in reply.corrections)
    assert reply.assistant_audio_base64 is None or reply.assistant_audio_base64 == "AAAA"


def test_nulls_and_absent_optionals_are_quietly_empty(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        reply = read_turn_reply(
            b'{"user_text":"u","assistant_text":"a","corrections":null,'
            b'"vocabulary_introduced":null,"assistant_audio_base64":""}',
            200,
        )
    assert (reply.corrections, reply.vocabulary_introduced) == ([], [])
    assert reply.assistant_audio_base64 is None
    assert caplog.records == []


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b'{"user_text":"u"}',
        b'{"user_text":"u","assistant_text":null}',
        b'{"user_text":1,"assistant_text":"a"}',
    ],
)
def test_no_turn_at_all_is_an_invalid_reply(body: bytes) -> None:
    with pytest.raises(BackendError) as caught:
        read_turn_reply(body, 200)
    assert caught.value.kind is BackendErrorKind.INVALID_REPLY
