"""Push delivery: a JSON object published for a user (the push API, on whichever instance)
sent to that user's open connections on this instance."""

from __future__ import annotations

import msgspec

from kalami_gateway.application.connections import Connections
from kalami_gateway.application.tasks import Background
from kalami_gateway.domain import protocol as p
from kalami_gateway.domain.instance import InstanceConnections


class PushDelivery:
    def __init__(
        self, connections: Connections, instance: InstanceConnections, background: Background
    ) -> None:
        self._connections = connections
        self._instance = instance
        self._background = background

    def deliver(self, user_id: str, payload: bytes) -> int:
        """Send a pushed JSON object to the user's connections on this instance; how many.

        Each send is a task of its own: a connection that does not read must not hold up the
        publisher or the user's other devices (its channel lets it go when it falls behind)."""
        message = p.Push(msgspec.Raw(payload))
        targets = [
            conn
            for connection_id in self._instance.of_user(user_id)
            if (conn := self._connections.open(connection_id)) is not None
        ]
        for conn in targets:
            self._background.spawn(conn.channel.send(message))
        return len(targets)
