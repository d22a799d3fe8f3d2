"""What the AsyncAPI document says of a message beyond its type (a summary, examples, whether
it goes as binary frames), and the shape of an example.

The schemas come from the domain's msgspec types; these words and examples cannot, so they are
written by hand, one ``Notes`` per message Struct (``sent``, ``received``). A message without
notes still appears in the document (with its schema), and tests/unit/adapters/test_asyncapi.py
fails until it has them: every example is decoded with its very type, as the gateway decodes
what a client sends. The examples are the ones docs/protocol.md shows, where it shows one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Json = Any


@dataclass(frozen=True)
class Example:
    """One example of a message: ``payload`` is the whole frame (a binary frame's bytes are
    shown in base64: JSON holds no bytes)."""

    name: str
    summary: str
    payload: Json


@dataclass(frozen=True)
class Notes:
    """``binary``: the message goes as binary frames, each one AsyncAPI message of raw bytes,
    not as the JSON its Struct would encode to."""

    summary: str
    examples: tuple[Example, ...]
    description: str | None = None
    binary: bool = False


def frame(message_type: str, payload: Json = None) -> Json:
    """A text frame as sent: ``{"type": ...}``, with its ``payload`` when there is one."""
    return {"type": message_type} if payload is None else {"type": message_type, "payload": payload}
