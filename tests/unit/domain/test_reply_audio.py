"""Reply audio a phone can take (issue 26, item 5): ``start_session``'s ``replyAudio``, the
state machine carrying it, the two forms of the tutor's audio, the cap, and the kept form."""

from __future__ import annotations

import base64
import json

import msgspec
import pytest

from kalami_gateway.domain import parking as pk
from kalami_gateway.domain import protocol as p
from kalami_gateway.domain import session as s
from kalami_gateway.domain.reply_audio import (
    DEFAULT_MAX_REPLY_AUDIO_BYTES,
    decoded_size,
    json_message_bytes,
    reply_audio,
)

LIMITS = s.Limits(max_audio_bytes=100, max_reply_audio_bytes=200_000)
ACTIVE = s.SessionState(s.Phase.ACTIVE, "s1", "prof", "travel")
BINARY = msgspec.structs.replace(ACTIVE, reply_audio="binary")
AUDIO = bytes(range(256)) * 600  # 153,600 bytes: three frames
AUDIO_BASE64 = base64.b64encode(AUDIO).decode()


def sends(decision: s.Decision) -> list[p.Outbound]:
    return [e.message for e in decision.effects if isinstance(e, s.Send)]


def turn(audio_base64: str | None = AUDIO_BASE64) -> s.TurnSucceeded:
    return s.TurnSucceeded("heard", "reply", [], [], audio_base64)


# --- the option -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "form"),
    [
        ({"profileId": "p1"}, "json"),
        ({"profileId": "p1", "replyAudio": "json"}, "json"),
        ({"profileId": "p1", "replyAudio": "binary"}, "binary"),
        ({"profileId": "p1", "replyAudio": None, "future": 1}, None),
    ],
)
def test_start_session_may_ask_for_binary_reply_audio(
    payload: dict[str, object], form: str | None
) -> None:
    decoded = p.decode_client_message(json.dumps({"type": "start_session", "payload": payload}))
    if form is None:  # a known field of the wrong type is an error, as everywhere
        assert isinstance(decoded, p.ProtocolError)
        assert decoded.code is p.ErrorCode.INVALID_PAYLOAD
        return
    assert isinstance(decoded, p.StartSession)
    assert decoded.payload.reply_audio == form


def test_an_unknown_form_is_an_invalid_payload_naming_the_field_with_the_old_hint() -> None:
    decoded = p.decode_client_message(
        '{"type":"start_session","payload":{"profileId":"p1","replyAudio":"opus"}}'
    )
    assert isinstance(decoded, p.ProtocolError)
    assert decoded.code is p.ErrorCode.INVALID_PAYLOAD
    assert "$.replyAudio" in decoded.message
    assert decoded.message.endswith('Expected {"profileId": string, "topic"?: string}.')


def test_the_session_keeps_the_form_it_was_started_with() -> None:
    start = p.StartSession(p.StartSessionPayload("prof", "travel", "binary"))
    asked = s.decide(s.IDLE, start, LIMITS)
    assert asked.effects == (s.CreateSession("prof", "travel", "binary"),)
    created = s.decide(s.IDLE, s.SessionCreated("s1", "prof", "travel", "binary"), LIMITS)
    assert created.state == BINARY
    assert sends(created) == [p.SessionStarted(p.SessionStartedPayload("s1", "prof", "travel"))]
    ended = s.decide(created.state, p.EndSession(), LIMITS)
    assert ended.state == s.IDLE  # the next session asks again


def test_a_recording_and_a_turn_keep_the_form() -> None:
    recording = s.decide(BINARY, p.StartRecording(p.StartRecordingPayload("wav")), LIMITS).state
    framed = s.decide(recording, s.AudioFrame(10), LIMITS).state
    processing = s.decide(framed, p.StopRecording(), LIMITS).state
    assert processing.reply_audio == "binary"
    after = s.decide(processing, turn(), LIMITS)
    assert after.state.reply_audio == "binary"
    assert after.state.phase is s.Phase.ACTIVE


# --- the two forms ----------------------------------------------------------------------


def test_by_default_the_audio_message_is_what_it_always_was() -> None:
    processing = msgspec.structs.replace(ACTIVE, phase=s.Phase.PROCESSING)
    replies = sends(s.decide(processing, turn("QUJD"), LIMITS))
    assert [p.encode_server_message(m) for m in replies if isinstance(m, p.AudioReply)] == [
        '{"type":"audio","payload":{"audio_base64":"QUJD","format":"mp3"}}'
    ]


def test_binary_reply_audio_comes_as_frames_after_the_response() -> None:
    processing = msgspec.structs.replace(BINARY, phase=s.Phase.PROCESSING)
    transcription, response, audio = sends(s.decide(processing, turn(), LIMITS))
    assert isinstance(transcription, p.Transcription)
    assert isinstance(response, p.Response)
    assert audio == p.AudioFrames(p.AudioFramesPayload(AUDIO, "mp3"))


def test_no_audio_from_the_backend_is_no_audio_in_either_form() -> None:
    for state in (ACTIVE, BINARY):
        processing = msgspec.structs.replace(state, phase=s.Phase.PROCESSING)
        assert [type(m) for m in sends(s.decide(processing, turn(None), LIMITS))] == [
            p.Transcription,
            p.Response,
        ]


def test_the_frames_are_announced_and_add_up_to_the_audio() -> None:
    frames = p.AudioFrames(p.AudioFramesPayload(AUDIO))
    start = frames.start()
    assert p.encode_server_message(start) == (
        '{"type":"audio_start","payload":{"format":"mp3","bytes":153600,"frames":3,'
        '"maxFrameBytes":65536}}'
    )
    cut = frames.frames()
    assert len(cut) == start.payload.frames
    assert b"".join(cut) == AUDIO
    assert [len(f) for f in cut] == [65536, 65536, 153600 - 2 * 65536]


@pytest.mark.parametrize("size", [1, 65535, 65536, 65537, 3 * 65536])
def test_frames_at_the_edges_of_their_size(size: int) -> None:
    frames = p.AudioFrames(p.AudioFramesPayload(b"\x07" * size))
    cut = frames.frames()
    assert frames.start().payload.frames == len(cut) == -(-size // p.AUDIO_FRAME_BYTES)
    assert all(0 < len(f) <= p.AUDIO_FRAME_BYTES for f in cut)
    assert sum(map(len, cut)) == size == frames.start().payload.bytes


# --- the cap ----------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["json", "binary"])
def test_audio_past_the_cap_is_not_sent_and_an_error_says_so(form: p.ReplyAudio) -> None:
    cap = len(AUDIO) - 1
    message = reply_audio(AUDIO_BASE64, form, cap)
    assert message == p.Error(
        p.ErrorPayload(
            f"The tutor's spoken reply ({len(AUDIO)} bytes) is larger than this gateway's "
            f"{cap}-byte limit and was not sent; its text is in the response.",
            "reply_audio_too_large",
        )
    )
    assert message.payload.in_reply_to is None  # the turn's outcome was its response


@pytest.mark.parametrize("form", ["json", "binary"])
def test_audio_of_the_cap_exactly_is_sent(form: p.ReplyAudio) -> None:
    message = reply_audio(AUDIO_BASE64, form, len(AUDIO))
    assert isinstance(message, p.AudioReply | p.AudioFrames)


def test_the_cap_is_applied_in_the_turn() -> None:
    limits = s.Limits(max_audio_bytes=100, max_reply_audio_bytes=10)
    processing = msgspec.structs.replace(BINARY, phase=s.Phase.PROCESSING)
    replies = sends(s.decide(processing, turn(), limits))
    assert [type(m) for m in replies] == [p.Transcription, p.Response, p.Error]


@pytest.mark.parametrize("size", range(12))
def test_the_size_of_base64_audio_is_known_without_decoding_it(size: int) -> None:
    assert decoded_size(base64.b64encode(bytes(size)).decode()) == size


@pytest.mark.parametrize("cap", [1, 2, 3, 4, 1000, 65536, DEFAULT_MAX_REPLY_AUDIO_BYTES])
def test_the_largest_json_audio_message_is_as_documented(cap: int) -> None:
    largest = reply_audio(base64.b64encode(bytes(cap)).decode(), "json", cap)
    assert isinstance(largest, p.AudioReply)
    assert len(p.encode_server_message(largest).encode()) == json_message_bytes(cap)


def test_the_default_json_message_fits_the_default_buffers() -> None:
    largest = json_message_bytes(DEFAULT_MAX_REPLY_AUDIO_BYTES)
    assert largest == 2_796_265  # README, docs/protocol.md
    assert largest < 3 << 20 < 4 << 20  # MAX_MESSAGE_BYTES, WS_SEND_BUFFER_BYTES


# --- kept for a parked session, resumed ---------------------------------------------------


def test_binary_audio_is_kept_as_binary_audio() -> None:
    frames = p.AudioFrames(p.AudioFramesPayload(AUDIO))
    assert p.decode_kept(p.encode_kept(frames)) == frames


def test_a_kept_message_of_a_kind_this_gateway_does_not_know_is_dropped() -> None:
    assert p.decode_kept(b'{"type":"audio_stream","payload":{}}') is None


def test_a_resumed_session_keeps_the_form() -> None:
    record = pk.SessionRecord("k", "alice", "s1", "prof", "travel", "claims", "binary")
    assert pk.resumed_state(record, "active") == BINARY
    older = pk.SessionRecord("k", "alice", "s1", "prof", "travel", "claims")
    assert pk.resumed_state(older, "active") == ACTIVE  # a record from before: JSON
