"""The scale harness's handshake classes: what a response head or an error counts as."""

from __future__ import annotations

import errno

import pytest
from bench.scale.outcomes import (
    Kind,
    by_kind,
    classify_error,
    classify_head,
    failures,
    silent_failures,
)


def test_a_101_is_ok() -> None:
    head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade"
    assert classify_head(head) == "ok"


@pytest.mark.parametrize("name", [b"Retry-After", b"retry-after", b"RETRY-AFTER"])
def test_a_status_with_retry_after_is_a_refusal_counted_under_its_code(name: bytes) -> None:
    head = b"HTTP/1.1 503 Service Unavailable\r\n" + name + b": 1\r\nContent-Length: 0"
    assert classify_head(head) == "retry_after:503"


def test_a_status_without_retry_after_is_counted_under_its_code() -> None:
    assert classify_head(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0") == "status:503"
    assert classify_head(b"HTTP/1.1 403 Forbidden") == "status:403"


def test_a_retry_after_in_a_value_is_not_the_header() -> None:
    head = b"HTTP/1.1 400 Bad Request\r\nX-Note: Retry-After: never"
    assert classify_head(head) == "status:400"


@pytest.mark.parametrize("head", [b"", b"garbage", b"HTTP/1.1 abc Nope", b"SSH-2.0-x 1"])
def test_a_head_that_is_not_http_is_malformed(head: bytes) -> None:
    assert classify_head(head) == "status:malformed"


def test_errors_before_a_response() -> None:
    assert classify_error(None) == "closed"
    assert classify_error(ConnectionResetError(errno.ECONNRESET, "reset")) == "reset"
    assert classify_error(BrokenPipeError(errno.EPIPE, "pipe")) == "closed"
    assert classify_error(TimeoutError(), connected=True) == "timeout:response"
    assert classify_error(TimeoutError(), connected=False) == "timeout:connect"


def test_a_failed_tcp_connect_is_counted_under_its_errno() -> None:
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "refused")
    assert classify_error(refused, connected=False) == "connect_error:ECONNREFUSED"
    no_address = OSError(errno.EADDRNOTAVAIL, "no address")
    assert classify_error(no_address, connected=False) == "connect_error:EADDRNOTAVAIL"


def test_counts_by_class_and_which_are_silent() -> None:
    counts = {
        "ok": 100,
        "retry_after:503": 7,
        "status:403": 1,
        "reset": 2,
        "closed": 3,
        "timeout:connect": 4,
        "timeout:response": 5,
        "connect_error:EADDRNOTAVAIL": 6,
        "lost_after_101:connection lost": 1,
    }
    kinds = by_kind(counts)
    assert kinds[Kind.OK] == 100
    assert kinds[Kind.RETRY_AFTER] == 7
    assert kinds[Kind.TIMEOUT] == 9
    assert failures(counts) == 29
    assert silent_failures(counts) == 2 + 3 + 9 + 6
