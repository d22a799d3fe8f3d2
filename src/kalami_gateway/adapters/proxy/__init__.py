"""The ``/api`` pass-through: ``ApiProxy`` relays each request to the backend and its answer
back, with the forwarding-header policy and the body budgets, over ``UpstreamPool``'s
HTTP/1.1 connections (reused only after an exchange that ended cleanly). Nothing here
knows of Redis, sessions or WebSockets."""

from kalami_gateway.adapters.proxy.connection import UpstreamPool
from kalami_gateway.adapters.proxy.relay import ApiProxy

__all__ = ["ApiProxy", "UpstreamPool"]
