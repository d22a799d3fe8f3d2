"""The single-process implementations of the cluster's ports, used when no ``REDIS_URL`` is
set: the connection directory, session parking and the push bus, all in the process's own
memory."""

from kalami_gateway.adapters.memory.directory import InMemoryDirectory
from kalami_gateway.adapters.memory.parking import InMemoryParking
from kalami_gateway.adapters.memory.push import LocalPushBus

__all__ = ["InMemoryDirectory", "InMemoryParking", "LocalPushBus"]
