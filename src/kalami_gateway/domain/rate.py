"""Per-connection rate limits by back-pressure: a token bucket that says how long to wait.

Nothing is refused or dropped: a connection over its rate is read more slowly. ``take``
debits what arrived (the balance may go negative) and returns how long to wait before
reading that connection again, so the long-run rate is ``rate`` and a burst of two seconds'
worth passes without waiting.
"""

from __future__ import annotations

BURST_SECONDS = 2.0


class TokenBucket:
    __slots__ = ("_burst", "_level", "_rate", "_stamp")

    def __init__(self, rate: float, now: float, burst_seconds: float = BURST_SECONDS) -> None:
        if rate <= 0:
            raise ValueError("a bucket needs a positive rate (0 means: no bucket)")
        self._rate = rate
        self._burst = rate * burst_seconds
        self._level = self._burst
        self._stamp = now

    def take(self, amount: float, now: float) -> float:
        """Debit ``amount``; the seconds to wait before reading more (0: go on)."""
        self._level = min(self._burst, self._level + (now - self._stamp) * self._rate) - amount
        self._stamp = now
        return 0.0 if self._level >= 0 else -self._level / self._rate

    def try_take(self, amount: float, now: float) -> bool:
        """Debit ``amount`` if the bucket holds it (True); else leave it be (False): for
        limits that refuse rather than slow down."""
        level = min(self._burst, self._level + (now - self._stamp) * self._rate)
        self._stamp = now
        if level < amount:
            self._level = level
            return False
        self._level = level - amount
        return True

    def full(self, now: float) -> bool:
        """Whether it has refilled completely (a new bucket would be the same)."""
        return self._level + (now - self._stamp) * self._rate >= self._burst


def bucket(rate: float, now: float) -> TokenBucket | None:
    """A bucket for ``rate`` per second, or None when the limit is off (0)."""
    return TokenBucket(rate, now) if rate > 0 else None
