"""The system clock, and the ticker that drives periodic domain checks."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from kalami_gateway.domain.ports import Clock

log = logging.getLogger(__name__)


class SystemClock(Clock):
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


async def run_every(interval_seconds: float, action: Callable[[], Awaitable[object]]) -> None:
    """Call ``action`` every ``interval_seconds`` until cancelled; a failing call is logged."""
    while True:
        await asyncio.sleep(interval_seconds)
        try:
            await action()
        except Exception:
            log.exception("ticker_action_failed")
