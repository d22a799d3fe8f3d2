"""What the voice-session state machine (``session``) says when it refuses a message or an
utterance: each text, word for word as clients have always read it, with its code.

A message the state does not allow is ``wrong_state``; one that only has to wait for the turn
being processed is ``turn_in_progress`` (its text always says to wait); an utterance with no
audio is ``empty_audio``, one past MAX_AUDIO_BYTES ``audio_too_large``.
"""

from __future__ import annotations

from typing import Final

from kalami_gateway.domain import protocol as p


def _wrong_state(text: str) -> p.Problem:
    return p.Problem(text, p.ErrorCode.WRONG_STATE)


def _busy(text: str) -> p.Problem:
    return p.Problem(text, p.ErrorCode.TURN_IN_PROGRESS)


_BUSY_TEXT: Final = (
    "The previous utterance is still being processed; wait for its response (or send end_session)."
)

BUSY: Final = _busy(_BUSY_TEXT)
NO_SESSION: Final = _wrong_state("No session is open; send start_session first.")
NOTHING_TO_END: Final = _wrong_state("No session is open, so there is nothing to end.")

FRAME_BEFORE_SESSION: Final = _wrong_state(
    "Binary audio frames are accepted only while recording; send start_session, "
    "then start_recording, first."
)
FRAME_BEFORE_RECORDING: Final = _wrong_state(
    "Binary audio frames are accepted only while recording; send start_recording first."
)
FRAME_WHILE_BUSY: Final = _busy(
    "Binary audio frames are accepted only while recording. " + _BUSY_TEXT
)

ALREADY_RECORDING: Final = _wrong_state(
    "Already recording; send stop_recording to finish this utterance first."
)
NOT_RECORDING: Final = _wrong_state(
    "Not recording; send start_recording, then audio frames, first."
)
STOP_WHILE_BUSY: Final = _busy("Not recording. " + _BUSY_TEXT)

AUDIO_WITHOUT_SESSION: Final = _wrong_state(
    "No session is open: name one with session_id (a session started over REST), "
    "or send start_session first."
)
AUDIO_WHILE_RECORDING: Final = _wrong_state(
    "A recording is in progress; finish it with stop_recording before "
    "sending a base64 audio message."
)

EMPTY_RECORDING: Final = p.Problem(
    "The utterance was empty: send binary audio frames between start_recording and stop_recording.",
    p.ErrorCode.EMPTY_AUDIO,
)
EMPTY_AUDIO_MESSAGE: Final = p.Problem(
    "The audio message was empty: audio_base64 has no data.", p.ErrorCode.EMPTY_AUDIO
)


def session_already_open(session_id: str | None) -> p.Problem:
    return _wrong_state(
        f"A session is already open (id {session_id}); send end_session before starting another."
    )


def recording_too_large(max_audio_bytes: int) -> p.Problem:
    """A recording's frames passed the limit: the utterance is dropped, recording stops."""
    return p.Problem(
        f"The utterance passed the {max_audio_bytes}-byte limit and was dropped; recording "
        "stopped. Send start_recording to try a shorter one.",
        p.ErrorCode.AUDIO_TOO_LARGE,
    )


def audio_message_too_large(max_audio_bytes: int) -> p.Problem:
    """An ``audio`` message's decoded utterance is over the limit (its turn fails at once)."""
    return p.Problem(
        f"The utterance is larger than the {max_audio_bytes}-byte limit.",
        p.ErrorCode.AUDIO_TOO_LARGE,
    )
