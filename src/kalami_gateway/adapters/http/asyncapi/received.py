"""The notes (summary, examples) of every message the gateway sends a client, by its Struct:
the text messages, and the reply's audio in binary frames (``AudioFrames``)."""

from __future__ import annotations

from typing import Final

import msgspec

from kalami_gateway.adapters.http.asyncapi.notes import Example, Notes, frame
from kalami_gateway.domain.protocol import (
    AudioFrames,
    AudioReceived,
    AudioReply,
    AudioStart,
    Connected,
    Error,
    ErrorCode,
    HeartbeatReply,
    Pong,
    Processing,
    Push,
    RecordingStarted,
    Refreshed,
    Response,
    SessionEnded,
    SessionResumed,
    SessionStarted,
    TokenExpiring,
    Transcription,
)

_ERROR_CODES: Final = ", ".join(f"`{code}`" for code in ErrorCode)

RECEIVE: Final[dict[type[msgspec.Struct], Notes]] = {
    Connected: Notes(
        "Sent once, first, when the connection is accepted.",
        (
            Example(
                "connected",
                "An accepted connection",
                frame(
                    "connected",
                    {
                        "connectionId": "6f7d2c1e-8a4b-4c3d-9e2f-1a2b3c4d5e6f",
                        "expiresAt": 1764400000,
                        "resumeToken": "pQ2vX9k3LmT8",
                    },
                ),
            ),
        ),
        "expiresAt is the token's exp (unix seconds); resumeToken lets the next connection "
        "carry this one's session on after a drop (?resume=).",
    ),
    SessionStarted: Notes(
        "The session start_session asked for is open.",
        (
            Example(
                "session_started",
                "A session on a topic",
                frame("session_started", {"id": "42", "profileId": "p-123", "topic": "travel"}),
            ),
        ),
    ),
    SessionResumed: Notes(
        "After connected, when ?resume= carried a dropped connection's session on.",
        (
            Example(
                "session_resumed",
                "A session whose turn is still running: its replies follow",
                frame(
                    "session_resumed",
                    {"id": "42", "profileId": "p-123", "topic": "travel", "state": "processing"},
                ),
            ),
        ),
    ),
    RecordingStarted: Notes(
        "Recording has started: send binary audio frames.",
        (Example("recording_started", "WebM", frame("recording_started", {"format": "webm"})),),
    ),
    AudioReceived: Notes(
        "After every binary frame: its size and the utterance's so far.",
        (
            Example(
                "audio_received",
                "The second 1600-byte frame",
                frame("audio_received", {"bytes": 1600, "totalBytes": 3200}),
            ),
        ),
    ),
    Processing: Notes(
        "A turn has started.",
        (Example("processing", "Transcribing", frame("processing", {"stage": "transcribing"})),),
    ),
    Transcription: Notes(
        "What the learner said.",
        (
            Example(
                "transcription",
                "The utterance as text",
                frame("transcription", {"text": "I goed to the market", "is_final": True}),
            ),
        ),
    ),
    Response: Notes(
        "The tutor's reply, with grammar corrections (each the object the backend sent, "
        "with every key it has) and the vocabulary introduced.",
        (
            Example(
                "response",
                "A reply with one correction",
                frame(
                    "response",
                    {
                        "text": "Nice! What did you buy?",
                        "grammar_corrections": [
                            {
                                "original": "I goed",
                                "corrected": "I went",
                                "explanation": "irregular past",
                                "category": "verb_tense",
                            }
                        ],
                        "vocabulary_introduced": ["market"],
                    },
                ),
            ),
        ),
    ),
    AudioReply: Notes(
        "The reply spoken, when the backend made audio, in base64 (replyAudio json, the default).",
        (
            Example(
                "audio",
                "MP3 audio in base64",
                frame("audio", {"audio_base64": "SUQzBAAAAAAAI1RTU0U=", "format": "mp3"}),
            ),
        ),
    ),
    AudioStart: Notes(
        "The reply spoken, for a session started with replyAudio binary: announces the audio, "
        "which follows in exactly `frames` binary frames, nothing else between them.",
        (
            Example(
                "audio_start",
                "30 s of mp3 in four frames",
                frame(
                    "audio_start",
                    {"format": "mp3", "bytes": 240000, "frames": 4, "maxFrameBytes": 65536},
                ),
            ),
        ),
    ),
    AudioFrames: Notes(
        "A piece of the reply's audio (replyAudio binary), after audio_start: in order, "
        "together `bytes` bytes of `format` audio.",
        (
            Example(
                "audio_frame",
                "The last frame of a reply (shown in base64; sent as raw bytes)",
                "SUQzBAAAAAAAI1RTU0U=",
            ),
        ),
        "A binary frame of at most maxFrameBytes (audio_start), never fragmented. These are "
        "the only binary frames the gateway sends. The example shows the bytes in base64 "
        "only because JSON holds no bytes.",
        binary=True,
    ),
    SessionEnded: Notes(
        "After end_session: the session is over (sent even if the backend call failed).",
        (Example("session_ended", "The session ended", frame("session_ended", {"id": "42"})),),
    ),
    Pong: Notes("The answer to ping.", (Example("pong", "A pong", frame("pong", {})),)),
    HeartbeatReply: Notes(
        "The answer to a heartbeat that is not itself an answer.",
        (Example("heartbeat", "A heartbeat's answer", frame("heartbeat", {"pong": True})),),
    ),
    Error: Notes(
        "What the gateway could not accept or do, and what to do about it. The connection "
        "stays open.",
        (
            Example(
                "error_wrong_state",
                "A message the session's state does not allow",
                frame(
                    "error",
                    {
                        "message": "Not recording; send start_recording, then audio frames, first.",
                        "code": "wrong_state",
                        "inReplyTo": "stop_recording",
                    },
                ),
            ),
            Example(
                "error_backend_rejected",
                "The backend refused a turn (a session_id that is not the learner's)",
                frame(
                    "error",
                    {
                        "message": (
                            "Could not process the utterance: the backend answered 404 "
                            "(Session not found). Please try again."
                        ),
                        "code": "backend_rejected",
                        "inReplyTo": "audio",
                        "status": 404,
                    },
                ),
            ),
        ),
        "message is for a person (its words may change); code is for a program, one of "
        f"{_ERROR_CODES} (docs/protocol.md §4). A code is never renamed; new ones may be "
        "added, so treat one you do not know as a plain error. inReplyTo: the type of the "
        "client message answered, absent when none was; status: the backend's HTTP status "
        "(backend_rejected); reason: why a resume or refresh was refused. A field with "
        "nothing to say is left out.",
    ),
    Push: Notes(
        "A message the backend pushed to the learner (POST /internal/push), in any state: "
        "its payload is the JSON object the backend sent.",
        (Example("push", "A push", frame("push", {"kind": "streak", "days": 7})),),
    ),
    Refreshed: Notes(
        "The refresh's token is now the connection's.",
        (Example("refreshed", "The new expiry", frame("refreshed", {"expiresAt": 1764403600})),),
    ),
    TokenExpiring: Notes(
        "Once per token, TOKEN_EXPIRY_WARNING (a minute by default) before it expires: "
        "refresh in time, or the connection is closed with 4003 at expiresAt.",
        (
            Example(
                "token_expiring",
                "The token expires soon",
                frame("token_expiring", {"expiresAt": 1764400000}),
            ),
        ),
    ),
}
