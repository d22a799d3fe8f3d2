"""When to try a failed backend call again: delays that double from ``first`` up to ``cap``,
for as long as their total fits in ``window``."""

from __future__ import annotations

from collections.abc import Iterator

END_RETRY_FIRST_SECONDS = 2.0
END_RETRY_CAP_SECONDS = 30.0


def backoff_delays(
    window: float, first: float = END_RETRY_FIRST_SECONDS, cap: float = END_RETRY_CAP_SECONDS
) -> Iterator[float]:
    """2, 4, 8, 16, 30, 30, … (seconds) while the running total stays within ``window``."""
    elapsed, delay = 0.0, first
    while elapsed + delay <= window:
        yield delay
        elapsed += delay
        delay = min(delay * 2, cap)


def already_gone(status: int | None) -> bool:
    """The backend's answer to an end call that means there is nothing left to end."""
    return status in (400, 404)


def refused(status: int | None) -> bool:
    """The backend's answer to an end call that no retry can change: the credential itself is
    refused (it was made from the learner's claims moments before the call)."""
    return status in (401, 403)
