"""The notes (summary, examples) of every message a client sends: the text messages, by
their Struct, and the binary frames of a recording (``RECORDING_FRAME``), which have none."""

from __future__ import annotations

from typing import Final

import msgspec

from kalami_gateway.adapters.http.asyncapi.notes import Example, Notes, frame
from kalami_gateway.domain.protocol import (
    AudioMessage,
    EndSession,
    Heartbeat,
    Ping,
    Refresh,
    StartRecording,
    StartSession,
    StopRecording,
)

SEND: Final[dict[type[msgspec.Struct], Notes]] = {
    StartSession: Notes(
        "Start a voice session (idle). Answered with session_started.",
        (
            Example(
                "start_session",
                "A session on a topic",
                frame("start_session", {"profileId": "p-123", "topic": "travel"}),
            ),
            Example(
                "start_session_no_topic",
                "A session with no topic",
                frame("start_session", {"profileId": "p-123"}),
            ),
            Example(
                "start_session_binary_reply",
                "A session whose replies' audio comes in binary frames (audio_start first)",
                frame(
                    "start_session",
                    {"profileId": "p-123", "topic": "travel", "replyAudio": "binary"},
                ),
            ),
        ),
    ),
    StartRecording: Notes(
        "Start recording an utterance (active). Answered with recording_started; binary "
        "frames follow.",
        (
            Example(
                "start_recording",
                "A recording in WebM",
                frame("start_recording", {"format": "webm"}),
            ),
            Example("start_recording_default", "No payload: WebM", frame("start_recording")),
        ),
    ),
    StopRecording: Notes(
        "The utterance is complete (recording): its turn runs. Answered with processing, "
        "transcription, response and (when the backend made audio) audio, or audio_start and "
        "binary frames (replyAudio binary); or one error.",
        (Example("stop_recording", "The end of the utterance", frame("stop_recording")),),
    ),
    AudioMessage: Notes(
        "A whole utterance in one message, instead of recording frames (active). With "
        "session_id (the Kalami app's way, idle or active): a turn of that session, opened "
        "over REST, which the gateway never ends.",
        (
            Example(
                "audio",
                "An utterance of the connection's own session",
                frame("audio", {"audio_base64": "GkXfo59ChoEBQveBAULygQQ=", "format": "webm"}),
            ),
            Example(
                "audio_app",
                "The Kalami app's way: the utterance names its REST session",
                frame(
                    "audio",
                    {
                        "audio_base64": "AAAAHGZ0eXBNNEEgAAAAAE00QSBpc29tbXA0Mg==",
                        "format": "m4a",
                        "session_id": "3f0c9a52-7d1e-4b8a-9c55-0d6f1b2e4a77",
                    },
                ),
            ),
        ),
    ),
    EndSession: Notes(
        "End the session (active, recording, processing); a turn in flight is cancelled. "
        "Answered with session_ended.",
        (Example("end_session", "The end of the session", frame("end_session")),),
    ),
    Ping: Notes(
        "An application-level check (any state). Answered with pong.",
        (Example("ping", "A ping", frame("ping")),),
    ),
    Heartbeat: Notes(
        "The Kalami app's keep-alive (any state). Answered with heartbeat {pong: true}, "
        "unless its payload is {pong: true}: that is an answer, and is not answered.",
        (
            Example("heartbeat", "A heartbeat", frame("heartbeat")),
            Example(
                "heartbeat_answer",
                "An answer to the gateway's heartbeat: nothing comes back",
                frame("heartbeat", {"pong": True}),
            ),
        ),
    ),
    Refresh: Notes(
        "A fresh token of the same user (any state), before token_expiring's expiresAt. "
        "Answered with refreshed; an invalid token or one of another user gets an error "
        "(refresh_refused) and the old token stays in force.",
        (
            Example(
                "refresh",
                "A new token of the same user",
                frame(
                    "refresh",
                    {
                        "token": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
                        "eyJzdWIiOiJtZSIsImV4cCI6MTc2NDQwMzYwMH0.c2lnbmF0dXJl"
                    },
                ),
            ),
        ),
    ),
}

# The learner's audio while recording: binary frames, of no Struct (they carry no type).
RECORDING_FRAME: Final = Notes(
    "The next chunk of the utterance being recorded (recording), about 100 ms of audio in "
    "the format start_recording named. Answered with audio_received.",
    (
        Example(
            "audio_frame",
            "16 bytes of audio (shown in base64; sent as raw bytes)",
            "AAAAAAAAAAAAAAAAAAAAAA==",
        ),
    ),
    "A binary frame: raw audio bytes, streamed on to the backend as they arrive. The whole "
    "utterance may be at most MAX_AUDIO_BYTES (10 MiB by default), each frame at most "
    "MAX_MESSAGE_BYTES (3 MiB by default; larger closes with 1009). The example shows the "
    "bytes in base64 only because JSON holds no bytes.",
    binary=True,
)
