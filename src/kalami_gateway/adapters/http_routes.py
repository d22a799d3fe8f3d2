"""The gateway's own HTTP routes (Litestar): service info, health, readiness, stats, metrics,
and the push API."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Annotated, Any, Final

import msgspec
from litestar import MediaType, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    ValidationException,
)
from litestar.handlers import BaseRouteHandler, HTTPRouteHandler
from litestar.params import JSONBody, SkipValidation

from kalami_gateway import __version__
from kalami_gateway.adapters.metrics import CONTENT_TYPE, PrometheusMetrics
from kalami_gateway.application.service import GatewayService
from kalami_gateway.domain.ports import (
    BackendHealth,
    ConnectionDirectory,
    PushBus,
    PushUnavailable,
)

SERVICE: Final = "kalami-gateway"
PUSH_PATH: Final = "/internal/push"
MAX_PUSH_BYTES: Final = 64 * 1024
KNOWN_ROUTES: Final = (
    "/",
    "/health",
    "/health/ready",
    "/stats",
    "/metrics",
    "/ws",
    PUSH_PATH,
    "/schema/openapi.json",
)


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
async def readiness(
    service: SkipValidation[GatewayService],
    directory: SkipValidation[ConnectionDirectory],
    cluster: SkipValidation[bool],
) -> Response[dict[str, str]]:
    verdict = await service.backend_health()
    body = {"status": "ready", "backend": "connected"}
    if verdict is BackendHealth.UNHEALTHY:
        body = {"status": "degraded", "backend": "unhealthy"}
    elif verdict is BackendHealth.UNREACHABLE:
        body = {"status": "not ready", "backend": "unreachable"}
    if cluster:
        await directory.counts()  # asks Redis, unless an outage is being waited out
        redis_up = directory.reachable()
        body["redis"] = "connected" if redis_up else "unreachable"
        if not redis_up and body["status"] == "ready":
            body["status"] = "degraded"
    return Response(body, status_code=200 if body["status"] == "ready" else 503)


@get("/stats")
async def stats(
    service: SkipValidation[GatewayService], directory: SkipValidation[ConnectionDirectory]
) -> dict[str, Any]:
    mine = service.instance_stats()
    cluster = await directory.counts()
    return {
        "websocket": {
            "connections": mine.connections,
            "users": mine.users,
            "acceptedTotal": mine.accepted_total,
            "peakConnections": mine.peak_connections,
        },
        "cluster": {
            "instances": cluster.instances,
            "connections": cluster.connections,
            "users": cluster.users,
        },
        # Waiting for their client to resume (cluster-wide on Redis; null while it is away).
        "sessions": {"parked": await service.parked_sessions()},
    }


@get("/metrics", media_type=MediaType.TEXT)
async def metrics(
    prometheus: SkipValidation[PrometheusMetrics], directory: SkipValidation[ConnectionDirectory]
) -> Response[bytes]:
    prometheus.cluster(await directory.counts())
    return Response(prometheus.render(), media_type=CONTENT_TYPE)


class PushRequest(msgspec.Struct, frozen=True):
    """What the backend sends to reach a learner's devices."""

    userId: Annotated[str, msgspec.Meta(min_length=1, description="The learner (a token's sub)")]
    payload: Annotated[dict[str, Any], msgspec.Meta(description="Any JSON object")]


class PushAccepted(msgspec.Struct, frozen=True):
    userId: str
    connections: int  # the user's open connections in the directory when it was published


def _error(status: int, message: str) -> Response[dict[str, str]]:
    return Response({"error": message}, status_code=status)


def _push_errors(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, str]]:
    if isinstance(exc, ValidationException):
        problems = exc.extra if isinstance(exc.extra, list) else []
        detail = "; ".join(
            f"{p.get('key') or 'body'}: {p.get('message')}" for p in problems if isinstance(p, dict)
        )
        return _error(422, f"Invalid push: {detail or exc.detail}")
    if isinstance(exc, HTTPException):
        if exc.status_code == 400:  # Litestar's word for a body that is not JSON
            return _error(422, f"Invalid push: {exc.detail}")
        return _error(exc.status_code, exc.detail)
    return _error(500, "Internal error")


def push_route(api_key: str, provide_bus: Callable[[], PushBus]) -> HTTPRouteHandler:
    """``POST /internal/push``: exists only when PUSH_API_KEY is set (otherwise 404)."""
    expected = f"Bearer {api_key}".encode()

    def require_key(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        given = connection.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):  # constant time
            raise NotAuthorizedException("Missing or wrong push API key")

    @post(
        PUSH_PATH,
        guards=[require_key],
        status_code=202,
        request_max_body_size=MAX_PUSH_BYTES,
        exception_handlers={HTTPException: _push_errors},
        summary="Push a message to every open connection of a user, on every instance",
        description=(
            "Authorization: Bearer <PUSH_API_KEY>. Every open connection of the user receives "
            '{"type":"push","payload":<payload>}. 401 wrong or missing key, 413 body over '
            "64 KiB, 422 bad body, 503 Redis unreachable."
        ),
    )
    async def push(
        data: JSONBody[PushRequest],
    ) -> Response[PushAccepted] | Response[dict[str, str]]:
        try:
            count = await provide_bus().publish(data.userId, msgspec.json.encode(data.payload))
        except PushUnavailable as exc:
            return _error(503, f"Push unavailable: {exc}")
        return Response(PushAccepted(data.userId, count), status_code=202)

    return push
