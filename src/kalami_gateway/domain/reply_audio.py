"""The tutor's spoken reply on its way to the client: in the form its session asked for
(``start_session``'s ``replyAudio``), and never past REPLY_AUDIO_MAX_BYTES.

- ``json``, the default (the seed protocol's way, and the app's, which never sends
  ``start_session``): one ``audio`` message with the backend's base64 passed on as it came,
  never decoded, so the message is byte for byte what it always was. Its largest size is
  ``json_message_bytes(cap)``: 2,796,265 bytes at the default cap, under the 3 MiB a client's
  own messages may have (MAX_MESSAGE_BYTES) and well under WS_SEND_BUFFER_BYTES (4 MiB), past
  which a connection is let go as a slow consumer: a reply of 3 MiB of audio (4 MiB of
  base64) could never be sent as JSON at all.
- ``binary``: ``AudioFrames``, which the channel sends as ``audio_start`` and then the audio in
  binary frames of at most 64 KiB: no base64 (a third more bytes on a phone's data plan), and
  no message over the 1 MiB iOS's URLSessionWebSocketTask takes by default.
- Past the cap, in either form: no audio at all, and in its place one ``error``
  (``reply_audio_too_large``, answering no message: the turn's own outcome, its ``response``,
  came before it). A client handles it as it handles a reply the backend made no audio for;
  cutting the audio short instead would hand it a file that ends mid-word, or does not play.
"""

from __future__ import annotations

import binascii
from typing import Final

from kalami_gateway.domain import protocol as p

# REPLY_AUDIO_MAX_BYTES's default: 2 MiB of audio, over four minutes of 64 kbit/s mp3 (a
# tutor's reply is seconds long: 30 s is 240 KB).
DEFAULT_MAX_REPLY_AUDIO_BYTES: Final = 2 << 20

# An ``audio`` message without its base64: what the JSON form adds to it.
_JSON_ENVELOPE: Final = len(p.encode_server_message(p.AudioReply(p.AudioReplyPayload(""))))


def decoded_size(audio_base64: str) -> int:
    """The size of the audio a padded base64 text holds (the backend's reply is checked to be
    base64 when it is read), without decoding it."""
    padding = 2 if audio_base64.endswith("==") else 1 if audio_base64.endswith("=") else 0
    return len(audio_base64) // 4 * 3 - padding


def json_message_bytes(max_audio_bytes: int) -> int:
    """The largest ``audio`` message (bytes of its text frame's payload) for a cap of
    ``max_audio_bytes`` of audio: its base64 (4 characters per 3 bytes, padded) and the
    envelope ``{"type":"audio","payload":{"audio_base64":"…","format":"mp3"}}``."""
    return 4 * -(-max_audio_bytes // 3) + _JSON_ENVELOPE


def too_large(size: int, max_bytes: int) -> p.Problem:
    return p.Problem(
        f"The tutor's spoken reply ({size} bytes) is larger than this gateway's {max_bytes}-byte "
        "limit and was not sent; its text is in the response.",
        p.ErrorCode.REPLY_AUDIO_TOO_LARGE,
    )


def reply_audio(audio_base64: str, form: p.ReplyAudio, max_bytes: int) -> p.Outbound:
    """What the client gets for the reply's audio: the ``audio`` message, ``AudioFrames``, or
    the ``error`` that stands for audio past ``max_bytes``."""
    size = decoded_size(audio_base64)
    if size > max_bytes:
        return p.error(too_large(size, max_bytes))
    if form == "binary":
        return p.AudioFrames(p.AudioFramesPayload(binascii.a2b_base64(audio_base64)))
    return p.AudioReply(p.AudioReplyPayload(audio_base64))
