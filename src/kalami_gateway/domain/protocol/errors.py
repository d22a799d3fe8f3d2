"""The closed list of ``error`` codes (docs/protocol.md, §4, lists each with what to do).

Every ``error`` the gateway sends carries one of these beside its human ``message``, so a
client branches on the code, never on the message's words. A code is never renamed or given
another meaning; one may be added (a client treats a code it does not know as a plain error
and shows its message). Where the meaning is the same, a code is the word the HTTP side uses
for it (adapters/errors.py): ``invalid_payload``, ``backend_unavailable``, ``backend_timeout``.
"""

from __future__ import annotations

import enum

import msgspec


class ErrorCode(enum.StrEnum):
    # The frame is not a message: not JSON, not an object, no "type", a "type" not a string.
    MALFORMED = "malformed"
    # A "type" the gateway does not know.
    UNKNOWN_TYPE = "unknown_type"
    # A known type whose payload has the wrong shape (a field missing or of the wrong type).
    INVALID_PAYLOAD = "invalid_payload"
    # The message is not allowed in the session's state (no session open, not recording, ...).
    WRONG_STATE = "wrong_state"
    # A turn is being processed: wait for its response (or error), or send end_session.
    TURN_IN_PROGRESS = "turn_in_progress"
    # The utterance had no audio (nothing recorded, or an empty audio_base64).
    EMPTY_AUDIO = "empty_audio"
    # The utterance passed MAX_AUDIO_BYTES and was dropped.
    AUDIO_TOO_LARGE = "audio_too_large"
    # Too many sessions started in the last minute (SESSION_START_RATE). Sending messages or
    # audio faster than WS_MESSAGE_RATE / WS_AUDIO_RATE is never an error: reading slows.
    RATE_LIMITED = "rate_limited"
    # The backend could not be reached (or broke the connection).
    BACKEND_UNAVAILABLE = "backend_unavailable"
    # The backend did not answer within BACKEND_TIMEOUT.
    BACKEND_TIMEOUT = "backend_timeout"
    # The backend answered with an error status (the error's ``status``).
    BACKEND_REJECTED = "backend_rejected"
    # The backend answered with a success the gateway cannot read.
    BACKEND_INVALID_REPLY = "backend_invalid_reply"
    # The reply of a turn was lost while its session moved (its server died): say it again.
    TURN_LOST = "turn_lost"
    # A resume (``resume=``) could not be honoured (the error's ``reason`` says why).
    RESUME_REFUSED = "resume_refused"
    # Some of the oldest messages kept for a resumed session were dropped (too many or large).
    MESSAGES_DROPPED = "messages_dropped"
    # A ``refresh`` token was not taken (the error's ``reason`` says why); the old one holds.
    REFRESH_REFUSED = "refresh_refused"
    # The tutor's spoken reply passed REPLY_AUDIO_MAX_BYTES: it was not sent (in either form);
    # the reply's text came in ``response`` before it.
    REPLY_AUDIO_TOO_LARGE = "reply_audio_too_large"


class Problem(msgspec.Struct, frozen=True):
    """What an ``error`` says, before it is known which client message it answers: the text
    for a person, the code, and the backend's status (``backend_rejected``) or the machine
    reason of a refusal (``resume_refused``, ``refresh_refused``) when there is one."""

    message: str
    code: ErrorCode
    status: int | None = None
    reason: str | None = None
