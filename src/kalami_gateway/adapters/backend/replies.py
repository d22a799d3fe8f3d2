"""Reading the backend's answer to a voice turn, liberally: the turn is never lost to a field
the gateway did not expect.

A turn needs only ``user_text`` and ``assistant_text`` as strings. Everything else is
optional and checked on its own: ``corrections`` is the LLM's JSON passed through by the
backend, so each correction that is a JSON object is relayed with every key it has (the app
reads ``category`` too); ``vocabulary_introduced`` keeps its strings; ``assistant_audio_base64``
must be base64. What does not fit is dropped with one warning per turn naming it; unknown
fields are ignored.
"""

from __future__ import annotations

import binascii
import logging
from typing import Any, Final

import msgspec

from kalami_gateway.domain.ports import BackendError, BackendErrorKind, TurnReply
from kalami_gateway.domain.protocol import GrammarCorrection

log = logging.getLogger(__name__)

_any: Final = msgspec.json.Decoder()
_UNREADABLE: Final = "the backend sent a reply the gateway could not read."


def read_turn_reply(body: bytes, status: int) -> TurnReply:
    """The turn in a 2xx body; ``BackendError`` (invalid reply) if it has no turn at all."""
    try:
        value = _any.decode(body)
    except msgspec.DecodeError:
        raise BackendError(BackendErrorKind.INVALID_REPLY, _UNREADABLE, status=status) from None
    if not isinstance(value, dict):
        raise BackendError(BackendErrorKind.INVALID_REPLY, _UNREADABLE, status=status)
    user_text = value.get("user_text")
    assistant_text = value.get("assistant_text")
    if not isinstance(user_text, str) or not isinstance(assistant_text, str):
        raise BackendError(BackendErrorKind.INVALID_REPLY, _UNREADABLE, status=status)
    dropped: list[str] = []
    reply = TurnReply(
        user_text=user_text,
        assistant_text=assistant_text,
        assistant_audio_base64=_audio(value.get("assistant_audio_base64"), dropped),
        corrections=_corrections(value.get("corrections"), dropped),
        vocabulary_introduced=_vocabulary(value.get("vocabulary_introduced"), dropped),
    )
    if dropped:
        log.warning("backend_reply_fields_dropped", extra={"fields": dropped})
    return reply


def _audio(value: Any, dropped: list[str]) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            binascii.a2b_base64(value, strict_mode=True)
        except (binascii.Error, ValueError):
            pass
        else:
            return value
    dropped.append("assistant_audio_base64")
    return None


def _corrections(value: Any, dropped: list[str]) -> list[GrammarCorrection]:
    if value is None:
        return []
    if not isinstance(value, list):
        dropped.append("corrections")
        return []
    kept: list[GrammarCorrection] = [c for c in value if isinstance(c, dict)]
    if len(kept) != len(value):
        dropped.append(f"corrections ({len(value) - len(kept)} not an object)")
    return kept


def _vocabulary(value: Any, dropped: list[str]) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        dropped.append("vocabulary_introduced")
        return []
    kept = [word for word in value if isinstance(word, str)]
    if len(kept) != len(value):
        dropped.append(f"vocabulary_introduced ({len(value) - len(kept)} not a string)")
    return kept
