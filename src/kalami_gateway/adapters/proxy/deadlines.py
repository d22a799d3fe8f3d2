"""How long the ``/api`` proxy waits for each thing, named: ``ProxyDeadlines``, derived from
the settings (one of them, ``BACKEND_TIMEOUT``, feeds most), and ``BodyPace``, the moving
deadline of a request body that must keep a minimum pace (issue 24).

Two more belong to the pool and are constants there (``pool.py``): ``IDLE_LIMIT`` (an idle
connection older than it is not handed out: under the backend's keep-alive timeout) and
``RETIRE_GRACE`` (how long a retired connection is left for the backend to close).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ProxyDeadlines:
    """Every wait of an ``/api`` exchange, in seconds. Past each, what the client gets."""

    # Opening a connection to the backend (504).
    connect: float
    # A free connection, and for a streamed body its share of the pool first: both within this
    # one wait (503 "no connection free").
    free_connection: float
    # The first bytes of a body read whole (a small one): what its pace allows with none
    # arrived (408).
    first_body_bytes: float
    # The client's next request body bytes, whatever the pace allows (408).
    body_stall: float
    # The backend taking the request body bytes written (504).
    backend_takes_body: float
    # The response head, from the end of the request body (504).
    response_head: float
    # The backend's next response body bytes (the body is cut: the head is out).
    response_stall: float

    @classmethod
    def from_settings(
        cls, backend_timeout: float, body_min_rate: int, body_rate_grace: float
    ) -> ProxyDeadlines:
        """``BACKEND_TIMEOUT`` (``backend_timeout``) bounds every wait; a body with a minimum
        rate gets at most ``API_BODY_RATE_GRACE`` (``body_rate_grace``) for its first bytes."""
        return cls(
            connect=backend_timeout,
            free_connection=backend_timeout,
            # The pace allows no longer with none arrived.
            first_body_bytes=(
                min(backend_timeout, body_rate_grace) if body_min_rate else backend_timeout
            ),
            body_stall=backend_timeout,
            backend_takes_body=backend_timeout,
            response_head=backend_timeout,
            response_stall=backend_timeout,
        )


class BodyPace:
    """When the gateway stops waiting for a request body's next bytes: ``stall`` seconds after
    it starts waiting, or once the body has fallen behind ``min_rate`` bytes/s by more than
    ``grace`` seconds — whichever comes first.

    Behind means: ``t`` seconds after the reading started, fewer than
    ``min_rate * (t - grace)`` bytes have arrived. A deadline on the next bytes is exact: the
    body falls behind at ``start + grace + received / min_rate``, and each arrival moves that
    moment on. Time spent waiting for the backend to take the body does not count."""

    __slots__ = ("_behind_at", "_per_byte", "stall")

    def __init__(self, stall: float, min_rate: int, grace: float, start: float) -> None:
        self.stall = stall
        self._per_byte = 1 / min_rate if min_rate else 0.0
        self._behind_at = start + grace if min_rate else math.inf

    def deadline(self, now: float) -> float:
        """The loop time by which the next bytes must arrive."""
        behind_at = self._behind_at
        stall_at = now + self.stall
        return stall_at if stall_at < behind_at else behind_at

    def received(self, size: int) -> None:
        self._behind_at += size * self._per_byte

    def paused(self, seconds: float) -> None:
        """The gateway did not read for ``seconds`` (the backend was not taking the body)."""
        self._behind_at += seconds

    def behind(self, now: float) -> bool:
        return now >= self._behind_at
