"""The per-connection voice-session state machine: data in, decisions out.

``decide(state, event, limits)`` returns the next state and the effects to carry out (replies to
send, backend calls to make, the utterance buffer to grow or drop). It does no I/O and keeps no
state of its own, so every transition is a plain function call in the tests.

    idle --start_session--> active --start_recording--> recording --stop_recording--> processing
    processing --turn finished or failed--> active;  end_session (any state but idle) --> idle

The app's dialect: an ``audio`` message naming a session it opened over REST runs one turn on
that session from idle or active (idle --audio{session_id}--> processing --> idle). The
connection's own session, if any, is unchanged; the named one is never ended here.

What it says when it refuses a message (each text with its ``error`` code) is
``session_errors``'; an error answers the client message that caused it (``inReplyTo``).
The form of a turn's reply audio (``start_session``'s ``replyAudio``, kept in the state while
the session is open) and its cap are ``reply_audio``'s.
"""

from __future__ import annotations

import enum
from typing import ClassVar, Final

import msgspec

from kalami_gateway.domain import protocol as p
from kalami_gateway.domain import session_errors as e
from kalami_gateway.domain.reply_audio import DEFAULT_MAX_REPLY_AUDIO_BYTES, reply_audio


class Phase(enum.Enum):
    IDLE = "idle"
    ACTIVE = "active"
    RECORDING = "recording"
    PROCESSING = "processing"


class SessionState(msgspec.Struct, frozen=True):
    """Where one connection's conversation stands."""

    phase: Phase = Phase.IDLE
    session_id: str | None = None
    profile_id: str | None = None
    topic: str | None = None
    audio_format: p.AudioFormat = "webm"
    buffered_bytes: int = 0
    upload_failed: bool = False  # the streamed upload broke: the rest of the recording is ignored
    # How its client takes reply audio (``replyAudio``), while the session is open (a resume
    # too: ``parking.SessionRecord``); the app's turns from idle have the default.
    reply_audio: p.ReplyAudio = "json"


IDLE: Final = SessionState()


class Limits(msgspec.Struct, frozen=True):
    max_audio_bytes: int
    max_reply_audio_bytes: int = DEFAULT_MAX_REPLY_AUDIO_BYTES  # REPLY_AUDIO_MAX_BYTES


# --- events that are not client messages ------------------------------------------------


class AudioFrame(msgspec.Struct, frozen=True):
    """A binary frame from the client."""

    size: int


class SessionCreated(msgspec.Struct, frozen=True):
    session_id: str
    profile_id: str
    topic: str | None
    reply_audio: p.ReplyAudio = "json"  # as start_session asked


class SessionCreateFailed(msgspec.Struct, frozen=True):
    problem: p.Problem  # its error answers start_session


class TurnSucceeded(msgspec.Struct, frozen=True):
    transcription: str
    reply_text: str
    corrections: list[p.GrammarCorrection]
    vocabulary: list[str]
    audio_base64: str | None


class TurnFailed(msgspec.Struct, frozen=True):
    problem: p.Problem
    # The message that started the turn (``Submit*.answers``); None if the client is not to
    # hear of one (the turn ran on another connection before a resume).
    in_reply_to: p.ClientMessageType | None = None


class UploadFailed(msgspec.Struct, frozen=True):
    """The backend failed (or timed out) while the utterance was being streamed to it (no
    client message is answered: the learner is still speaking)."""

    problem: p.Problem


class TurnRelayed(msgspec.Struct, frozen=True):
    """A turn that ran on another connection (before a resume) is over; its messages were
    relayed as they came."""


Event = (
    p.ClientMessage
    | AudioFrame
    | SessionCreated
    | SessionCreateFailed
    | TurnSucceeded
    | TurnFailed
    | TurnRelayed
    | UploadFailed
)


# --- effects ------------------------------------------------------------------------------


class Send(msgspec.Struct, frozen=True):
    message: p.Outbound


class CreateSession(msgspec.Struct, frozen=True):
    profile_id: str
    topic: str | None
    reply_audio: p.ReplyAudio = "json"  # handed back in SessionCreated


class EndSession(msgspec.Struct, frozen=True):
    """End the session at the backend, then tell the client ``session_ended``."""

    session_id: str


class StartUtterance(msgspec.Struct, frozen=True):
    """Start a new, empty utterance (a buffer, or an upload streamed to the backend)."""


class AppendAudio(msgspec.Struct, frozen=True):
    """Add the frame just received to the utterance."""


class DropUtterance(msgspec.Struct, frozen=True):
    """Forget the utterance (an upload under way is aborted: the backend sees no turn)."""


class SubmitUtterance(msgspec.Struct, frozen=True):
    """Hand the utterance to the backend as one turn (in the background): send the buffer,
    or close the streamed upload's body, then relay the reply."""

    session_id: str
    audio_format: p.AudioFormat
    answers: ClassVar[p.ClientMessageType] = "stop_recording"  # what the turn's error answers


class SubmitEncodedAudio(msgspec.Struct, frozen=True):
    """Hand the utterance of an ``audio`` message (decoded from its base64) to the backend as
    one turn."""

    session_id: str
    audio_format: p.AudioFormat
    audio: bytes
    answers: ClassVar[p.ClientMessageType] = "audio"


class CancelTurn(msgspec.Struct, frozen=True):
    """Stop waiting for the turn in flight."""


Effect = (
    Send
    | CreateSession
    | EndSession
    | StartUtterance
    | AppendAudio
    | DropUtterance
    | SubmitUtterance
    | SubmitEncodedAudio
    | CancelTurn
)


class Decision(msgspec.Struct, frozen=True):
    state: SessionState
    effects: tuple[Effect, ...] = ()


_PONG: Final = Send(p.Pong())
_HEARTBEAT: Final = Send(p.HeartbeatReply())


def decide(state: SessionState, event: Event, limits: Limits) -> Decision:
    """The next state and the effects of ``event`` arriving in ``state``."""
    phase = state.phase
    match event:
        case p.Ping():
            return Decision(state, (_PONG,))
        case p.Heartbeat(payload=payload):
            # The app answers every heartbeat: answering its answers would loop forever.
            return Decision(state, () if payload.is_answer else (_HEARTBEAT,))
        case p.Refresh():
            return Decision(state)  # the token is the service's business, not the session's
        case AudioFrame(size=size):
            if phase is not Phase.RECORDING:
                return _refuse(state, _AUDIO_FRAME_REFUSALS[phase], None)  # answers no message
            total = state.buffered_bytes + size
            if state.upload_failed:  # acknowledged, and ignored until stop_recording
                return Decision(
                    msgspec.structs.replace(state, buffered_bytes=total),
                    (Send(p.AudioReceived(p.AudioReceivedPayload(size, total))),),
                )
            if total > limits.max_audio_bytes:
                return Decision(
                    msgspec.structs.replace(state, phase=Phase.ACTIVE, buffered_bytes=0),
                    (DropUtterance(), _error(e.recording_too_large(limits.max_audio_bytes))),
                )
            return Decision(
                msgspec.structs.replace(state, buffered_bytes=total),
                (AppendAudio(), Send(p.AudioReceived(p.AudioReceivedPayload(size, total)))),
            )
        case p.StartSession(payload=payload):
            if phase is Phase.PROCESSING and state.session_id is None:
                return _refuse(state, e.BUSY, event)  # a turn on a session named by the app
            if phase is not Phase.IDLE:
                return _refuse(state, e.session_already_open(state.session_id), event)
            return Decision(
                state, (CreateSession(payload.profile_id, payload.topic, payload.reply_audio),)
            )
        case SessionCreated(session_id=session_id, profile_id=profile_id, topic=topic):
            if phase is not Phase.IDLE:
                return Decision(state)
            return Decision(
                SessionState(
                    Phase.ACTIVE, session_id, profile_id, topic, reply_audio=event.reply_audio
                ),
                (Send(p.SessionStarted(p.SessionStartedPayload(session_id, profile_id, topic))),),
            )
        case SessionCreateFailed(problem=problem):
            return Decision(IDLE, (_error(problem, "start_session"),))
        case p.StartRecording(payload=payload):
            if phase is not Phase.ACTIVE:
                return _refuse(state, _START_RECORDING_REFUSALS[phase], event)
            return Decision(
                msgspec.structs.replace(
                    state,
                    phase=Phase.RECORDING,
                    audio_format=payload.format,
                    buffered_bytes=0,
                    upload_failed=False,
                ),
                (
                    StartUtterance(),
                    Send(p.RecordingStarted(p.RecordingStartedPayload(payload.format))),
                ),
            )
        case p.StopRecording():
            if phase is not Phase.RECORDING:
                return _refuse(state, _STOP_RECORDING_REFUSALS[phase], event)
            assert state.session_id is not None  # noqa: S101  # recording implies a session
            if state.upload_failed:  # its one error was sent when the upload broke
                return Decision(
                    msgspec.structs.replace(
                        state, phase=Phase.ACTIVE, buffered_bytes=0, upload_failed=False
                    )
                )
            if state.buffered_bytes == 0:
                return Decision(
                    msgspec.structs.replace(state, phase=Phase.ACTIVE),
                    (DropUtterance(), _error(e.EMPTY_RECORDING, "stop_recording")),
                )
            return Decision(
                msgspec.structs.replace(state, phase=Phase.PROCESSING, buffered_bytes=0),
                (
                    Send(_TRANSCRIBING),
                    SubmitUtterance(state.session_id, state.audio_format),
                ),
            )
        case p.AudioMessage(payload=payload):
            named = None if payload.session_id is None else str(payload.session_id)
            if phase is not Phase.ACTIVE and not (named is not None and phase is Phase.IDLE):
                return _refuse(state, _AUDIO_MESSAGE_REFUSALS[phase], event)
            target = named if named is not None else state.session_id
            assert target is not None  # noqa: S101  # active implies a session
            if not payload.audio_base64:
                return _refuse(state, e.EMPTY_AUDIO_MESSAGE, event)
            return Decision(
                msgspec.structs.replace(state, phase=Phase.PROCESSING, audio_format=payload.format),
                (
                    Send(_TRANSCRIBING),
                    SubmitEncodedAudio(target, payload.format, payload.audio_base64),
                ),
            )
        case TurnSucceeded():
            if phase is not Phase.PROCESSING:
                return Decision(state)
            replies: list[Effect] = [
                Send(p.Transcription(p.TranscriptionPayload(event.transcription))),
                Send(
                    p.Response(
                        p.ResponsePayload(event.reply_text, event.corrections, event.vocabulary)
                    )
                ),
            ]
            if event.audio_base64:
                audio = reply_audio(
                    event.audio_base64, state.reply_audio, limits.max_reply_audio_bytes
                )
                replies.append(Send(audio))
            return Decision(_turn_over(state), tuple(replies))
        case TurnFailed(problem=problem, in_reply_to=in_reply_to):
            if phase is not Phase.PROCESSING:
                return Decision(state)
            return Decision(_turn_over(state), (_error(problem, in_reply_to),))
        case UploadFailed(problem=problem):
            if phase is not Phase.RECORDING or state.upload_failed:
                return Decision(state)
            return Decision(
                msgspec.structs.replace(state, upload_failed=True),
                (DropUtterance(), _error(problem)),
            )
        case TurnRelayed():
            if phase is not Phase.PROCESSING:
                return Decision(state)
            return Decision(_turn_over(state))
        case p.EndSession():
            if phase is Phase.IDLE or state.session_id is None:
                # A session the app opened over REST is ended over REST, never here.
                return _refuse(state, e.NOTHING_TO_END, event)
            effects: list[Effect] = []
            if phase is Phase.PROCESSING:
                effects.append(CancelTurn())
            elif phase is Phase.RECORDING:
                effects.append(DropUtterance())
            effects.append(EndSession(state.session_id))
            return Decision(IDLE, tuple(effects))
    raise AssertionError(f"unhandled event {event!r}")  # pragma: no cover


def _turn_over(state: SessionState) -> SessionState:
    """After a turn: active on the connection's own session, idle if the turn was on a session
    the app named (the connection has none of its own)."""
    if state.session_id is None:
        return IDLE
    return msgspec.structs.replace(state, phase=Phase.ACTIVE)


def on_disconnect(state: SessionState) -> tuple[Effect, ...]:
    """What to clean up when the connection goes, whatever way it goes."""
    effects: list[Effect] = []
    if state.phase is Phase.PROCESSING:
        effects.append(CancelTurn())
    if state.phase is Phase.RECORDING:
        effects.append(DropUtterance())
    if state.session_id is not None:
        effects.append(EndSession(state.session_id))
    return tuple(effects)


_TRANSCRIBING: Final = p.Processing(p.ProcessingPayload("transcribing"))


def _error(problem: p.Problem, in_reply_to: p.ClientMessageType | None = None) -> Send:
    return Send(p.error(problem, in_reply_to))


def _refuse(state: SessionState, problem: p.Problem, answering: p.ClientMessage | None) -> Decision:
    """Refuse ``answering`` (None: a binary frame, which has no type) and change nothing."""
    in_reply_to = None if answering is None else p.message_type(answering)
    return Decision(state, (_error(problem, in_reply_to),))


# What each message is told in each phase it is not allowed in (texts and codes:
# session_errors).
_AUDIO_FRAME_REFUSALS: Final = {
    Phase.IDLE: e.FRAME_BEFORE_SESSION,
    Phase.ACTIVE: e.FRAME_BEFORE_RECORDING,
    Phase.PROCESSING: e.FRAME_WHILE_BUSY,
}
_START_RECORDING_REFUSALS: Final = {
    Phase.IDLE: e.NO_SESSION,
    Phase.RECORDING: e.ALREADY_RECORDING,
    Phase.PROCESSING: e.BUSY,
}
_STOP_RECORDING_REFUSALS: Final = {
    Phase.IDLE: e.NO_SESSION,
    Phase.ACTIVE: e.NOT_RECORDING,
    Phase.PROCESSING: e.STOP_WHILE_BUSY,
}
_AUDIO_MESSAGE_REFUSALS: Final = {
    Phase.IDLE: e.AUDIO_WITHOUT_SESSION,
    Phase.RECORDING: e.AUDIO_WHILE_RECORDING,
    Phase.PROCESSING: e.BUSY,
}
