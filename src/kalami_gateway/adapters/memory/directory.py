"""The connection directory of a single process: the default when no Redis is configured."""

from __future__ import annotations

from kalami_gateway.domain.directory import admits
from kalami_gateway.domain.ports import ConnectionDirectory, ConnectionEntry, DirectoryCounts


class InMemoryDirectory(ConnectionDirectory):
    """One instance, no lease to keep: the process's own memory is the whole cluster."""

    def __init__(self) -> None:
        self._entries: dict[str, ConnectionEntry] = {}
        self._by_user: dict[str, set[str]] = {}

    async def register(self, entry: ConnectionEntry, cap: int) -> bool:
        if entry.connection_id in self._entries:
            return True
        if not admits(len(self._by_user.get(entry.user_id, ())), cap):
            return False
        self._by_user.setdefault(entry.user_id, set()).add(entry.connection_id)
        self._entries[entry.connection_id] = entry
        return True

    async def unregister(self, entry: ConnectionEntry) -> None:
        known = self._entries.pop(entry.connection_id, None)
        if known is None:
            return
        ids = self._by_user[known.user_id]
        ids.discard(known.connection_id)
        if not ids:
            del self._by_user[known.user_id]

    async def counts(self) -> DirectoryCounts:
        return DirectoryCounts(
            instances=1, connections=len(self._entries), users=len(self._by_user)
        )

    async def connections_of(self, user_id: str) -> frozenset[str]:
        return frozenset(self._by_user.get(user_id, ()))

    async def renew(self) -> None:
        return None

    def reachable(self) -> bool:
        return True

    async def leave(self) -> None:
        self._entries.clear()
        self._by_user.clear()
