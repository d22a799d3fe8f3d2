"""The connection directory on Redis: every instance of the cluster registers its connections
under a lease it renews; Lua scripts (``scripts.py``) make each step atomic.

Keys (all under the prefix ``p``; Redis standalone or a primary — the scripts compute keys,
so Redis Cluster is not supported):

- ``p instances``            sorted set: instance id -> lease expiry (ms, Redis's own clock)
- ``p instance:<id>``        hash: connection id -> user id (that instance's connections)
- ``p user:<user id>``       set of the user's connection ids, across instances
- ``p users``                set of user ids with at least one connection

Every script first *reaps*: an instance whose lease has lapsed (killed, cut off, frozen) is
removed with its connections, so a dead instance is gone within one lease (``LEASE_SECONDS``)
of its last renewal, as soon as anyone asks. Every key also carries a TTL (``KEY_TTL``,
refreshed on use), so a cluster that dies entirely leaves nothing behind.

Redis trouble is survivable: this instance keeps a mirror of its own entries and never fails
a connection because Redis is away. While Redis is unreachable, the cap is judged on this
instance's own connections, the counts are this instance's, and one warning is logged per
outage. The next successful renewal (every ``RENEW_SECONDS``) writes the mirror back (the
instance "re-registers"), so the cluster figures are right again within one lease period.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from typing import Any

from redis.asyncio import Redis

from kalami_gateway.adapters.redis import LEASE_SECONDS, RENEW_SECONDS, scripts
from kalami_gateway.adapters.redis.batcher import Batcher
from kalami_gateway.adapters.redis.client import REDIS_FAILURES
from kalami_gateway.domain.directory import admits
from kalami_gateway.domain.ports import ConnectionDirectory, ConnectionEntry, DirectoryCounts

log = logging.getLogger(__name__)


def new_instance_id() -> str:
    """Readable in Redis: host and process, plus randomness for restarts that reuse a pid."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class RedisDirectory(ConnectionDirectory):
    """This instance's part of the cluster's directory, on Redis (see the module docstring)."""

    def __init__(
        self,
        client: Redis,
        prefix: str,
        instance_id: str | None = None,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self.instance_id = instance_id or new_instance_id()
        self._lease_ms = str(int(lease_seconds * 1000))
        self._register = client.register_script(scripts.REGISTER)
        self._unregister = client.register_script(scripts.UNREGISTER)
        # Connects and disconnects that arrive while a call is on the wire go together in the
        # next one: one script call per batch, not per connection (CPU per connect, measured
        # in bench/README.md).
        self._registrations: Batcher[tuple[ConnectionEntry, int], bool] = Batcher(
            self._register_batch
        )
        self._unregistrations: Batcher[str, None] = Batcher(self._unregister_batch)
        self._renew = client.register_script(scripts.RENEW)
        self._resync = client.register_script(scripts.RESYNC)
        self._leave = client.register_script(scripts.LEAVE)
        self._counts = client.register_script(scripts.COUNTS)
        self._connections_of = client.register_script(scripts.CONNECTIONS_OF)
        # This instance's entries: the truth when Redis is away, written back when it returns.
        self._mine: dict[str, ConnectionEntry] = {}
        self._by_user: dict[str, set[str]] = {}
        self._up = True
        self._needs_resync = True  # the first renewal joins the cluster
        # Unregistered while a resync was in flight: unregistered again after it.
        self._removed_meanwhile: list[ConnectionEntry] | None = None

    async def register(self, entry: ConnectionEntry, cap: int) -> bool:
        if entry.connection_id in self._mine:
            return True
        if self._up and not self._needs_resync:
            try:
                admitted = await self._registrations.submit((entry, cap))
            except REDIS_FAILURES as exc:
                self._went_down(exc)
            else:
                if admitted:
                    self._remember(entry)
                return admitted
        # Redis is away (or we are not back in the directory yet): judge on what is here.
        if not admits(len(self._by_user.get(entry.user_id, ())), cap):
            return False
        self._remember(entry)
        return True

    async def unregister(self, entry: ConnectionEntry) -> None:
        if self._forget(entry.connection_id) is None:
            return
        if self._removed_meanwhile is not None:
            self._removed_meanwhile.append(entry)
        if not self._up:
            return  # the next resync writes back a mirror without it
        try:
            await self._unregistrations.submit(entry.connection_id)
        except REDIS_FAILURES as exc:
            self._went_down(exc)

    async def _register_batch(self, batch: list[tuple[ConnectionEntry, int]]) -> list[bool]:
        args: list[Any] = [self._prefix, self.instance_id, self._lease_ms]
        for entry, cap in batch:
            args += (entry.connection_id, entry.user_id, cap)
        dropped_out, *admitted = await self._register(args=args)
        if dropped_out:
            self._needs_resync = True  # Redis lost us (a restart, or we were reaped)
        return [bool(a) for a in admitted]

    async def _unregister_batch(self, connection_ids: list[str]) -> list[None]:
        await self._unregister(args=[self._prefix, self.instance_id, *connection_ids])
        return [None] * len(connection_ids)

    async def counts(self) -> DirectoryCounts:
        if self._up:
            try:
                instances, connections, users = await self._counts(args=[self._prefix])
            except REDIS_FAILURES as exc:
                self._went_down(exc)
            else:
                return DirectoryCounts(int(instances), int(connections), int(users))
        return DirectoryCounts(1, len(self._mine), len(self._by_user))

    async def connections_of(self, user_id: str) -> frozenset[str]:
        if self._up:
            try:
                ids = await self._connections_of(args=[self._prefix, user_id])
            except REDIS_FAILURES as exc:
                self._went_down(exc)
            else:
                return frozenset(i.decode() if isinstance(i, bytes) else str(i) for i in ids)
        return frozenset(self._by_user.get(user_id, ()))

    async def renew(self) -> None:
        """Called every RENEW_SECONDS: extends the lease; after an outage, or if Redis lost
        this instance, writes every entry of this instance back."""
        try:
            dropped_out = await self._renew(args=[self._prefix, self.instance_id, self._lease_ms])
            if dropped_out or self._needs_resync:
                await self._write_back()
        except REDIS_FAILURES as exc:
            self._went_down(exc)
            return
        if not self._up:
            self._up = True
            log.warning(
                "redis_reachable_again",
                extra={"instance": self.instance_id, "connections": len(self._mine)},
            )

    def reachable(self) -> bool:
        return self._up

    async def leave(self) -> None:
        """Take this instance out of the directory at once (a clean shutdown)."""
        self._mine.clear()
        self._by_user.clear()
        try:
            await self._leave(args=[self._prefix, self.instance_id])
        except REDIS_FAILURES:
            return  # the lease lapses on its own

    async def _write_back(self) -> None:
        self._removed_meanwhile = []
        try:
            pairs: list[Any] = []
            for entry in self._mine.values():
                pairs += (entry.connection_id, entry.user_id)
            await self._resync(args=[self._prefix, self.instance_id, self._lease_ms, *pairs])
            self._needs_resync = False
            # A connection that went away while the write-back was on the wire may have been
            # written back after its unregister: unregister it again (it is idempotent).
            for entry in self._removed_meanwhile:
                await self._unregister(args=[self._prefix, self.instance_id, entry.connection_id])
        finally:
            self._removed_meanwhile = None

    def _went_down(self, exc: BaseException) -> None:
        self._needs_resync = True
        if self._up:
            self._up = False
            log.warning(
                "redis_unreachable",
                extra={
                    "instance": self.instance_id,
                    "error": f"{type(exc).__name__}: {exc}",
                    "retry_every_s": RENEW_SECONDS,
                },
            )

    def _remember(self, entry: ConnectionEntry) -> None:
        self._mine[entry.connection_id] = entry
        self._by_user.setdefault(entry.user_id, set()).add(entry.connection_id)

    def _forget(self, connection_id: str) -> ConnectionEntry | None:
        entry = self._mine.pop(connection_id, None)
        if entry is not None:
            ids = self._by_user[entry.user_id]
            ids.discard(connection_id)
            if not ids:
                del self._by_user[entry.user_id]
        return entry
