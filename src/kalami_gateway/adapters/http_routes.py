"""The gateway's own HTTP routes (Litestar): service info, health, readiness, stats, metrics."""

from __future__ import annotations

import asyncio
from typing import Any, Final

from litestar import MediaType, Response, get
from litestar.params import SkipValidation

from kalami_gateway import __version__
from kalami_gateway.adapters.metrics import CONTENT_TYPE, PrometheusMetrics
from kalami_gateway.domain.ports import Backend, BackendHealth, ConnectionRegistry

SERVICE: Final = "kalami-gateway"
READINESS_TIMEOUT_SECONDS: Final = 5.0
KNOWN_ROUTES: Final = ("/", "/health", "/health/ready", "/stats", "/metrics", "/ws")


# Handler dependencies come from the container, not from a request: they are marked
# SkipValidation (Litestar cannot isinstance-check a Protocol, and need not check our objects).


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
async def readiness(backend: SkipValidation[Backend]) -> Response[dict[str, str]]:
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
def stats(registry: SkipValidation[ConnectionRegistry]) -> dict[str, Any]:
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
def metrics(prometheus: SkipValidation[PrometheusMetrics]) -> Response[bytes]:
    return Response(prometheus.render(), media_type=CONTENT_TYPE)
