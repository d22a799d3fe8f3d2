"""The gateway's own HTTP routes (Litestar): service info, health, readiness, stats, metrics."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Final, TypeVar

from litestar import MediaType, Response, get
from litestar.params import Dependency

from kalami_gateway import __version__
from kalami_gateway.adapters.metrics import CONTENT_TYPE, PrometheusMetrics
from kalami_gateway.domain.ports import Backend, BackendHealth, ConnectionRegistry

T = TypeVar("T")
# Our dependencies are built by the container, not parsed from a request: Litestar need not
# validate them (and cannot isinstance-check a Protocol).
Injected = Annotated[T, Dependency(skip_validation=True)]

SERVICE: Final = "kalami-gateway"
READINESS_TIMEOUT_SECONDS: Final = 5.0
KNOWN_ROUTES: Final = ("/", "/health", "/health/ready", "/stats", "/metrics", "/ws")


@get("/", sync_to_thread=False)
def index() -> dict[str, Any]:
    return {
        "name": SERVICE,
        "version": __version__,
        "endpoints": {
            "health": "/health",
            "readiness": "/health/ready",
            "stats": "/stats",
            "metrics": "/metrics",
            "websocket": "/ws?token=<JWT>",
            "api": "/api/{path}",
        },
    }


@get("/health", sync_to_thread=False)
def health() -> dict[str, str]:
    return {"status": "healthy", "service": SERVICE, "version": __version__}


@get("/health/ready")
async def readiness(backend: Injected[Backend]) -> Response[dict[str, str]]:
    try:
        verdict = await asyncio.wait_for(backend.health(), READINESS_TIMEOUT_SECONDS)
    except TimeoutError:
        verdict = BackendHealth.UNREACHABLE
    if verdict is BackendHealth.HEALTHY:
        return Response({"status": "ready", "backend": "connected"}, status_code=200)
    if verdict is BackendHealth.UNHEALTHY:
        return Response({"status": "degraded", "backend": "unhealthy"}, status_code=503)
    return Response({"status": "not ready", "backend": "unreachable"}, status_code=503)


@get("/stats", sync_to_thread=False)
def stats(registry: Injected[ConnectionRegistry]) -> dict[str, Any]:
    snapshot = registry.stats()
    return {
        "websocket": {
            "connections": snapshot.connections,
            "users": snapshot.users,
            "acceptedTotal": snapshot.accepted_total,
            "peakConnections": snapshot.peak_connections,
        }
    }


@get("/metrics", sync_to_thread=False, media_type=MediaType.TEXT)
def metrics(prometheus: Injected[PrometheusMetrics]) -> Response[bytes]:
    return Response(prometheus.render(), media_type=CONTENT_TYPE)
