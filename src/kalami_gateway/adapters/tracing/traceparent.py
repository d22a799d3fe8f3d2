"""W3C Trace Context's ``traceparent`` header (https://www.w3.org/TR/trace-context/), read and
written by hand: the one header the gateway sends and continues. Version 00 is written; any
version but ff is read by its first four fields, as the recommendation asks of a newer one."""

from __future__ import annotations

import re
from typing import Final

from opentelemetry.trace import SpanContext, TraceFlags

HEADER: Final = b"traceparent"
# tracestate travels with the traceparent it belongs to: dropped whenever that one is.
STATE_HEADER: Final = b"tracestate"
_FORMAT: Final = re.compile(rb"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")


def format_traceparent(context: SpanContext) -> bytes:
    """The header value that makes the receiver's spans children of ``context``'s span."""
    return b"00-%032x-%016x-%02x" % (context.trace_id, context.span_id, context.trace_flags)


def parse_traceparent(value: bytes) -> SpanContext | None:
    """The remote span a traceparent names (None: malformed, version ff, or an all-zero id)."""
    match = _FORMAT.match(value.strip())
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == b"ff" or (version == b"00" and rest is not None):
        return None
    trace = int(trace_id, 16)
    span = int(span_id, 16)
    if not trace or not span:
        return None
    return SpanContext(trace, span, is_remote=True, trace_flags=TraceFlags(int(flags, 16) & 1))
