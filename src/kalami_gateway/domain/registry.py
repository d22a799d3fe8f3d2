"""The in-memory connection registry: connections by id and by user, and their statistics."""

from __future__ import annotations

from kalami_gateway.domain.ports import ConnectionEntry, ConnectionRegistry, RegistryStats


class InMemoryConnectionRegistry(ConnectionRegistry):
    """One process's connections. Not shared between workers: each keeps its own."""

    def __init__(self) -> None:
        self._by_id: dict[str, ConnectionEntry] = {}
        self._by_user: dict[str, dict[str, ConnectionEntry]] = {}
        self._accepted_total = 0
        self._peak = 0

    def add(self, entry: ConnectionEntry) -> None:
        if entry.connection_id in self._by_id:
            raise ValueError(f"connection {entry.connection_id} is already registered")
        self._by_id[entry.connection_id] = entry
        self._by_user.setdefault(entry.user_id, {})[entry.connection_id] = entry
        self._accepted_total += 1
        self._peak = max(self._peak, len(self._by_id))

    def remove(self, connection_id: str) -> ConnectionEntry | None:
        entry = self._by_id.pop(connection_id, None)
        if entry is None:
            return None
        user_connections = self._by_user[entry.user_id]
        del user_connections[connection_id]
        if not user_connections:
            del self._by_user[entry.user_id]
        return entry

    def get(self, connection_id: str) -> ConnectionEntry | None:
        return self._by_id.get(connection_id)

    def for_user(self, user_id: str) -> list[ConnectionEntry]:
        return list(self._by_user.get(user_id, {}).values())

    def entries(self) -> list[ConnectionEntry]:
        return list(self._by_id.values())

    def stats(self) -> RegistryStats:
        return RegistryStats(
            connections=len(self._by_id),
            users=len(self._by_user),
            accepted_total=self._accepted_total,
            peak_connections=self._peak,
        )
