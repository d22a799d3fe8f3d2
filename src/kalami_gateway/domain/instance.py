"""This instance's own connections: by id and by user, with its accepted total and peak.

The cluster's view is the ConnectionDirectory; these figures are this process's (its
``/stats`` ``websocket`` object and its connection gauges).
"""

from __future__ import annotations

import msgspec


class InstanceStats(msgspec.Struct, frozen=True):
    connections: int
    users: int
    accepted_total: int
    peak_connections: int


class InstanceConnections:
    """Connection ids of this instance, grouped by user."""

    def __init__(self) -> None:
        self._user_of: dict[str, str] = {}
        self._by_user: dict[str, set[str]] = {}
        self._accepted_total = 0
        self._peak = 0

    def add(self, connection_id: str, user_id: str) -> None:
        if connection_id in self._user_of:
            raise ValueError(f"connection {connection_id} is already here")
        self._user_of[connection_id] = user_id
        self._by_user.setdefault(user_id, set()).add(connection_id)
        self._accepted_total += 1
        self._peak = max(self._peak, len(self._user_of))

    def remove(self, connection_id: str) -> str | None:
        """Forget a connection; returns its user, or None if it was not here."""
        user_id = self._user_of.pop(connection_id, None)
        if user_id is None:
            return None
        ids = self._by_user[user_id]
        ids.discard(connection_id)
        if not ids:
            del self._by_user[user_id]
        return user_id

    def of_user(self, user_id: str) -> frozenset[str]:
        return frozenset(self._by_user.get(user_id, ()))

    def stats(self) -> InstanceStats:
        return InstanceStats(
            connections=len(self._user_of),
            users=len(self._by_user),
            accepted_total=self._accepted_total,
            peak_connections=self._peak,
        )
