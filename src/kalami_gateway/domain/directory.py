"""Who may open one more connection: the directory's admission rule, the same for every
directory (in memory, Redis)."""

from __future__ import annotations


def admits(open_connections: int, cap: int) -> bool:
    """Whether a user with ``open_connections`` may open one more (``cap`` 0: no cap)."""
    return cap <= 0 or open_connections < cap
