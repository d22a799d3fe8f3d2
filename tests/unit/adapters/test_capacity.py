"""The ceiling of client sockets and what happens at it (adapters/capacity.py), on a fake
count: no sockets."""

from __future__ import annotations

import logging

import pytest

from kalami_gateway.adapters.capacity import (
    Ceiling,
    Headroom,
    SocketCapacity,
    connection_ceiling,
)


def test_the_ceiling_is_the_limit_less_the_headroom_or_the_setting() -> None:
    headroom = Headroom(listeners=1, upstream=1224, redis=32)
    assert headroom.total == 1 + 1224 + 32 + 64 + 256
    assert connection_ceiling(20_000, headroom).client_sockets == 18_423
    assert connection_ceiling(20_000, headroom, setting=500).client_sockets == 500
    assert connection_ceiling(20_000, headroom, setting=500).headroom is None
    assert connection_ceiling(1_000, headroom).client_sockets == 1  # never below one


def capacity_at(ceiling: int, count: list[int]) -> SocketCapacity:
    capacity = SocketCapacity(Ceiling(ceiling, 1000, None))
    capacity.count_with(lambda: count[0])
    return capacity


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == name]


def test_past_the_ceiling_handshakes_are_refused_and_a_burst_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="kalami_gateway.adapters.capacity")
    count = [100]
    capacity = capacity_at(100, count)
    assert capacity.admits_websocket()  # the asking socket is counted: 100 of 100
    count[0] = 101
    assert not capacity.admits_websocket()
    assert not capacity.admits_websocket()
    # A slot freed now and then under a steady overload: admitted, still the same burst.
    count[0] = 99
    assert capacity.admits_websocket()
    count[0] = 101
    assert not capacity.admits_websocket()
    assert capacity.refused == 3
    assert len(events(caplog, "ws_ceiling_reached")) == 1
    assert events(caplog, "ws_ceiling_cleared") == []
    # Well under the ceiling: the burst is over, and said so with its count.
    count[0] = 95
    assert capacity.admits_websocket()
    [cleared] = events(caplog, "ws_ceiling_cleared")
    assert cleared.refused == 3  # type: ignore[attr-defined]
    count[0] = 101
    assert not capacity.admits_websocket()
    assert len(events(caplog, "ws_ceiling_reached")) == 2  # a new burst


def test_failed_accepts_are_counted_by_errno_and_a_burst_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="kalami_gateway.adapters.capacity")
    capacity = capacity_at(100, [100])
    capacity.accept_failed("EMFILE")
    capacity.accept_failed("EMFILE")
    capacity.accept_failed("ENFILE")
    assert capacity.accept_errors == {"EMFILE": 2, "ENFILE": 1}
    assert len(events(caplog, "accept_out_of_files")) == 1
    capacity.accepted()
    [recovered] = events(caplog, "accept_recovered")
    assert recovered.failed == 3  # type: ignore[attr-defined]
    capacity.accepted()
    assert len(events(caplog, "accept_recovered")) == 1
