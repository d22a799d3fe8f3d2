"""What became of one WebSocket handshake, in the classes the scale report counts.

``ok`` is a 101 followed by the gateway's ``connected`` welcome. A refusal the client can act
on is an HTTP status with ``Retry-After`` (the 503 past a worker's connection ceiling); any
other status is counted under its code; a connection reset or closed before any response, a
response that never came (``timeout``, before or after the TCP connect) and a connect that
failed outright (its errno) are the silent failures.
"""

from __future__ import annotations

import errno
from collections import Counter
from collections.abc import Mapping
from enum import StrEnum
from typing import Final

HEAD_END: Final = b"\r\n\r\n"


class Kind(StrEnum):
    OK = "ok"
    RETRY_AFTER = "retry_after"  # an HTTP status with Retry-After: a refusal to retry later
    STATUS = "status"  # any other HTTP status (detail: the code)
    RESET = "reset"  # ECONNRESET before a response
    CLOSED = "closed"  # the peer closed before a response (end of file)
    TIMEOUT = "timeout"  # no response in time (detail: connect or response)
    CONNECT_ERROR = "connect_error"  # the TCP connect failed (detail: errno name)
    LOST_AFTER_101 = "lost_after_101"  # upgraded, then no welcome (detail: why)


# The classes that are failures the client cannot tell from a network fault.
SILENT: Final = frozenset({Kind.RESET, Kind.CLOSED, Kind.TIMEOUT, Kind.CONNECT_ERROR})


def key(kind: Kind, detail: str = "") -> str:
    """The counter key: the class, and its detail after a colon (``status:403``)."""
    return f"{kind}:{detail}" if detail else str(kind)


def kind_of(counter_key: str) -> Kind:
    return Kind(counter_key.split(":", 1)[0])


def classify_head(head: bytes) -> str:
    """The key for a response head (status line and headers, without the blank line)."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return key(Kind.STATUS, "malformed")
    status = int(parts[1])
    if status == 101:
        return key(Kind.OK)
    names = {line.split(b":", 1)[0].strip().lower() for line in lines[1:] if b":" in line}
    if b"retry-after" in names:
        return key(Kind.RETRY_AFTER, str(status))
    return key(Kind.STATUS, str(status))


def classify_error(exc: BaseException | None, connected: bool = True) -> str:
    """The key for a handshake that ended without a response: ``exc`` is what ended it (None:
    the peer closed cleanly); ``connected`` whether the TCP connect had completed."""
    if exc is None:
        return key(Kind.CLOSED)
    if isinstance(exc, TimeoutError):
        return key(Kind.TIMEOUT, "response" if connected else "connect")
    if isinstance(exc, ConnectionResetError):
        return key(Kind.RESET)
    if isinstance(exc, BrokenPipeError | ConnectionAbortedError):
        return key(Kind.CLOSED)
    if isinstance(exc, OSError) and exc.errno is not None:
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        return key(Kind.CONNECT_ERROR if not connected else Kind.RESET, name)
    return key(Kind.CLOSED, type(exc).__name__)


def by_kind(counts: Mapping[str, int]) -> Counter[Kind]:
    """The counts added up per class, details merged."""
    totals: Counter[Kind] = Counter()
    for counter_key, count in counts.items():
        totals[kind_of(counter_key)] += count
    return totals


def failures(counts: Mapping[str, int]) -> int:
    """Every handshake that did not end in a welcomed connection."""
    return sum(n for k, n in counts.items() if kind_of(k) is not Kind.OK)


def silent_failures(counts: Mapping[str, int]) -> int:
    """Failures without an HTTP answer: what a client cannot tell from a network fault."""
    return sum(n for k, n in counts.items() if kind_of(k) in SILENT)
