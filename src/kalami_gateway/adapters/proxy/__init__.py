"""The ``/api`` pass-through: ``ApiProxy`` relays each request to the backend and its answer
back, with the forwarding-header policy (``forwarding``) and the body budgets, over
``UpstreamPool``'s HTTP/1.1 connections (``connection``, an asyncio shell around the sans-I/O
``exchange``), reused only after an exchange that ended cleanly. Every wait is named in
``deadlines``. Nothing here knows of Redis, sessions or WebSockets."""

from kalami_gateway.adapters.proxy.pool import UpstreamPool
from kalami_gateway.adapters.proxy.relay import POOL_SIZE, ApiProxy

__all__ = ["POOL_SIZE", "ApiProxy", "UpstreamPool"]
