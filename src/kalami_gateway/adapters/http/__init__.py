"""The gateway's HTTP face apart from ``/api``: the edge every request passes (host check,
request id, CORS, access metrics: ``HttpEdge``), the gateway's own routes (index, health,
stats, metrics, push, the AsyncAPI document of the WebSocket protocol), the ``/ws`` handler
that hands each accepted socket to the application, and the request checks they share
(``valid_host``, ``TrustedPeers``)."""

from kalami_gateway.adapters.http.asyncapi import ASYNCAPI_PATH, asyncapi_document, asyncapi_route
from kalami_gateway.adapters.http.checks import TrustedPeers, climbs_out, valid_host
from kalami_gateway.adapters.http.edge import CorsPolicy, HttpEdge, ProxyCall
from kalami_gateway.adapters.http.routes import (
    ADMIN_PATHS,
    KNOWN_ROUTES,
    PUSH_PATH,
    gateway_errors,
    health,
    index_route,
    metrics,
    push_route,
    readiness,
    security_schemes,
    stats,
)
from kalami_gateway.adapters.http.websocket import SameOrigin, SendLimits, ws_route

__all__ = [
    "ADMIN_PATHS",
    "ASYNCAPI_PATH",
    "KNOWN_ROUTES",
    "PUSH_PATH",
    "CorsPolicy",
    "HttpEdge",
    "ProxyCall",
    "SameOrigin",
    "SendLimits",
    "TrustedPeers",
    "asyncapi_document",
    "asyncapi_route",
    "climbs_out",
    "gateway_errors",
    "health",
    "index_route",
    "metrics",
    "push_route",
    "readiness",
    "security_schemes",
    "stats",
    "valid_host",
    "ws_route",
]
