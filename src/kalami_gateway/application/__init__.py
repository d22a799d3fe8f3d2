"""Application code: orchestration of the domain over time (tasks, cancellation, gathering).
The domain decides; this layer runs the decisions: it owns the asyncio tasks of voice turns,
the connections of this instance, and the calls to the ports, laid out by use case (admission,
turns, backend sessions, resume and parking, token expiry, push, drain, the cleanup of backend
sessions nobody owns) behind one face, ``GatewayService``, which the adapters call and the
container builds from ``ServiceLimits`` and a ``SessionCleanup`` of its own."""

from kalami_gateway.application.cleanup import SessionCleanup
from kalami_gateway.application.connections import Connection, Forwarded, Stage
from kalami_gateway.application.limits import ServiceLimits
from kalami_gateway.application.resume import LOST_REPLY
from kalami_gateway.application.service import GatewayService
from kalami_gateway.application.tasks import Sleep

__all__ = [
    "LOST_REPLY",
    "Connection",
    "Forwarded",
    "GatewayService",
    "ServiceLimits",
    "SessionCleanup",
    "Sleep",
    "Stage",
]
