"""The proxy's deadlines as derived from the settings: BACKEND_TIMEOUT bounds every wait, and a
body with a minimum rate gets no longer than its grace for its first bytes."""

from __future__ import annotations

import dataclasses

from kalami_gateway.adapters.proxy.deadlines import ProxyDeadlines


def test_backend_timeout_bounds_every_wait() -> None:
    deadlines = ProxyDeadlines.from_settings(30.0, body_min_rate=0, body_rate_grace=10.0)
    assert set(dataclasses.asdict(deadlines).values()) == {30.0}


def test_a_minimum_rate_bounds_the_wait_for_a_bodys_first_bytes_by_its_grace() -> None:
    paced = ProxyDeadlines.from_settings(30.0, body_min_rate=1024, body_rate_grace=10.0)
    assert paced.first_body_bytes == 10.0
    assert paced.body_stall == 30.0  # the pace moves the deadline of the later bytes itself
    short = ProxyDeadlines.from_settings(2.0, body_min_rate=1024, body_rate_grace=10.0)
    assert short.first_body_bytes == 2.0
