"""The gateway's own HTTP routes (Litestar): service info, health, readiness, stats, metrics,
and the push API (the AsyncAPI document's route is with the document: ``asyncapi``).

Each route's schema entry (/schema/openapi.json) declares every status it answers, each with
its body's type: the Structs of ``bodies``, and ``HttpError`` for every error the gateway
answers itself. Litestar's own answers that belong to no route (an unknown path's 404, a wrong
method's 405) are in that shape too (``gateway_errors``).
"""

from __future__ import annotations

import hmac
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Final, Literal

import msgspec
from litestar import MediaType, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException, NotAuthorizedException, NotFoundException
from litestar.handlers import BaseRouteHandler, HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import (
    OpenAPIMediaType,
    OpenAPIType,
    Operation,
    RequestBody,
    Schema,
    SecurityScheme,
)
from litestar.params import SkipValidation

from kalami_gateway import __version__
from kalami_gateway.adapters.errors import PUSH_UNAVAILABLE, HttpError, code_for
from kalami_gateway.adapters.http.asyncapi import ASYNCAPI_PATH
from kalami_gateway.adapters.http.bodies import (
    BackendState,
    ClusterStats,
    ConnectionStats,
    Health,
    ProcessStats,
    PushAccepted,
    PushRequest,
    Readiness,
    ReadyStatus,
    RedisState,
    ServiceInfo,
    SessionStats,
    Stats,
)
from kalami_gateway.adapters.metrics import CONTENT_TYPE, PrometheusMetrics, spread
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
# How deep a push body may nest arrays and objects; the body itself is level 1.
MAX_PUSH_DEPTH: Final = 64
KNOWN_ROUTES: Final = (
    "/",
    "/health",
    "/health/ready",
    "/stats",
    "/metrics",
    "/ws",
    PUSH_PATH,
    "/schema/openapi.json",
    ASYNCAPI_PATH,
)


# Handler dependencies come from the container, not from a request: they are marked
# SkipValidation (Litestar cannot isinstance-check a Protocol, and need not check our objects).


ADMIN_PATHS: Final = ("/metrics", "/stats", "/health", "/health/ready")


def index_route(extra: dict[str, str], admin_port: int = 0) -> HTTPRouteHandler:
    """``GET /``: every route the running configuration serves (``extra``: those a setting
    turns on, the playground and the push API; ``api`` only where ``/api`` is proxied; with
    ADMIN_PORT, ``/stats`` and ``/metrics`` are there, not here)."""
    operators = (
        {"admin": f"port {admin_port}: {', '.join(ADMIN_PATHS)}"}
        if admin_port
        else {"stats": "/stats", "metrics": "/metrics"}
    )
    info = ServiceInfo(
        SERVICE,
        __version__,
        {
            "health": "/health",
            "readiness": "/health/ready",
            **operators,
            "websocket": "/ws?token=<JWT>",
            "schema": "/schema/openapi.json",
            "asyncapi": ASYNCAPI_PATH,
            **extra,
        },
    )

    @get(
        "/",
        sync_to_thread=False,
        operation_id="index",
        summary="What this gateway is and the routes it serves",
        response_description="The service, its version, and each route's path",
    )
    def index() -> ServiceInfo:
        return info

    return index


@get(
    "/health",
    sync_to_thread=False,
    operation_id="health",
    summary="Liveness: the process answers",
    response_description="Always healthy while the process answers",
)
def health() -> Health:
    return Health("healthy", SERVICE, __version__)


@get(
    "/health/ready",
    operation_id="readiness",
    summary="Readiness: the backend (and Redis, when configured) can be reached",
    response_description="Ready: the backend answers its health check (and Redis is connected)",
    responses={
        503: ResponseSpec(
            Readiness,
            description=(
                "Not ready: the backend unhealthy (degraded) or unreachable (not ready), "
                "or Redis unreachable (degraded)"
            ),
            generate_examples=False,
        )
    },
)
async def readiness(
    service: SkipValidation[GatewayService],
    directory: SkipValidation[ConnectionDirectory],
    cluster: SkipValidation[bool],
    stub: SkipValidation[bool],
) -> Response[Readiness]:
    verdict = await service.backend_health()
    status: ReadyStatus = "ready"
    backend: BackendState = "connected"
    api: Literal["not served"] | msgspec.UnsetType = msgspec.UNSET
    if stub:
        # Sessions and turns go to the in-process stub; nothing is proxied (/api is 404).
        backend, api = "stub", "not served"
    elif verdict is BackendHealth.UNHEALTHY:
        status, backend = "degraded", "unhealthy"
    elif verdict is BackendHealth.UNREACHABLE:
        status, backend = "not ready", "unreachable"
    redis: RedisState | msgspec.UnsetType = msgspec.UNSET
    if cluster:
        await directory.counts()  # asks Redis, unless an outage is being waited out
        redis_up = directory.reachable()
        redis = "connected" if redis_up else "unreachable"
        if not redis_up and status == "ready":
            status = "degraded"
    body = Readiness(status, backend, api, redis)
    return Response(body, status_code=200 if status == "ready" else 503)


@get(
    "/stats",
    operation_id="stats",
    summary=(
        "Connection counts: this instance's, the cluster's, parked sessions, and each serving "
        "process's sockets against its ceiling"
    ),
    response_description="The counts",
)
async def stats(
    service: SkipValidation[GatewayService],
    directory: SkipValidation[ConnectionDirectory],
    prometheus: SkipValidation[PrometheusMetrics],
) -> Stats:
    mine = service.instance_stats()
    cluster = await directory.counts()
    processes = [
        ProcessStats(
            load.pid,
            load.websocket_connections,
            load.client_sockets,
            load.ceiling,
            load.refused,
            open_files,
            limit,
        )
        for load, open_files, limit in prometheus.serving_processes()
    ]
    return Stats(
        ConnectionStats(
            mine.connections, mine.users, mine.accepted_total, mine.peak_connections, os.getpid()
        ),
        ClusterStats(cluster.instances, cluster.connections, cluster.users),
        SessionStats(await service.parked_sessions()),
        processes,
        spread([process.connections for process in processes]),
    )


@get(
    "/metrics",
    media_type=MediaType.TEXT,
    operation_id="metrics",
    summary="Prometheus metrics",
    response_description="The Prometheus text exposition format",
)
async def metrics(
    prometheus: SkipValidation[PrometheusMetrics], directory: SkipValidation[ConnectionDirectory]
) -> Response[bytes]:
    counts = await directory.counts()  # asks Redis, unless an outage is being waited out
    prometheus.cluster(counts, directory.reachable())
    return Response(prometheus.render(), media_type=CONTENT_TYPE)


class InvalidPush(Exception):
    """A push body refused with 422; the message says why."""


_decode_push: Final = msgspec.json.Decoder(PushRequest)
# A JSON string, escapes included: its brackets open and close nothing.
_JSON_STRING: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"[]{}")
_LEVEL_STEP: Final = tuple(1 if b in b"[{" else -1 if b in b"]}" else 0 for b in range(256))


def _nesting(body: bytes) -> int:
    """How deep ``body`` nests arrays and objects (``{}`` is 1), without parsing it. Where the
    body is not JSON the count may be off, but never below the depth a parser reaches before
    it meets the error. Every step runs in C: ~2 ms for 64 KiB of brackets, 5x a loop's speed."""
    brackets = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_LEVEL_STEP.__getitem__, brackets), initial=0))


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return found


def _ignore(_: str) -> None:
    return None


def parse_push(body: bytes) -> PushRequest:
    """The push in ``body``, or InvalidPush.

    Nesting is measured before anything parses the body: msgspec and the json module recurse
    once per level and meet Python's recursion limit near 1,000 levels (a RecursionError, a
    500 and a traceback). A repeated key, at any level, is refused rather than resolved
    (last wins) differently by the gateway and by whatever else reads the same body. msgspec
    decides what is JSON and what shape it has; the json module, which reports object pairs,
    finds repeated keys (its numbers are not even converted: only keys matter there)."""
    if _nesting(body) > MAX_PUSH_DEPTH:
        raise InvalidPush(f"nested deeper than {MAX_PUSH_DEPTH} levels")
    try:
        push = _decode_push.decode(body)
    except msgspec.DecodeError as exc:  # ValidationError included: not JSON, or wrong shape
        raise InvalidPush(str(exc)) from None
    try:
        json.loads(
            body,
            object_pairs_hook=_refuse_duplicates,
            parse_int=_ignore,
            parse_float=_ignore,
            parse_constant=_ignore,
        )
    except _DuplicateKey as exc:
        raise InvalidPush(f"duplicate key {exc.key!r}") from None
    except ValueError as exc:  # not expected: msgspec has taken it as JSON
        raise InvalidPush(str(exc)) from None
    return push


def _error(status: int, message: str, code: str | None = None) -> Response[HttpError]:
    return Response(HttpError(message, code or code_for(status)), status_code=status)


def gateway_errors(_: Request[Any, Any, Any], exc: Exception) -> Response[HttpError]:
    """Litestar's own refusals (an unknown route's 404, a wrong method's 405, the push
    route's guards and body limit) and anything unexpected (500), in the gateway's one error
    shape instead of Litestar's ``{"status_code", "detail"}``."""
    if isinstance(exc, HTTPException):
        return _error(exc.status_code, exc.detail)
    return _error(500, "Internal error")


@dataclass
class _PushOperation(Operation):
    """The push route's schema entry: the handler reads its body itself (``parse_push``), so
    Litestar cannot see the body's shape and is told it here."""

    def __post_init__(self) -> None:
        body = Schema(
            type=OpenAPIType.OBJECT,
            required=["userId", "payload"],
            properties={
                "userId": Schema(
                    type=OpenAPIType.STRING, min_length=1, description="The learner (a token's sub)"
                ),
                "payload": Schema(
                    type=OpenAPIType.OBJECT,
                    description=f"Any JSON object, nested at most {MAX_PUSH_DEPTH - 1} levels",
                ),
            },
            description="No key may appear twice in one object, at any level.",
        )
        self.request_body = RequestBody(
            content={"application/json": OpenAPIMediaType(schema=body)}, required=True
        )


# The push route's security scheme, by the name its schema entry gives it.
PUSH_AUTH: Final = "pushApiKey"


def security_schemes() -> dict[str, SecurityScheme]:
    """The security schemes the routes name, for the schema's ``components``. The push API
    key is a bearer token: a shared secret, compared as sent, not a JWT. (/ws, opened with a
    learner's JWT, has no entry to name a scheme from: OpenAPI describes no WebSocket.)"""
    return {
        PUSH_AUTH: SecurityScheme(
            type="http",
            scheme="bearer",
            description="The PUSH_API_KEY setting: Authorization: Bearer <PUSH_API_KEY>",
        )
    }


def _push_responses() -> dict[int, ResponseSpec]:
    accepted = "Published to every instance; connections: the user's open connections"
    return {
        202: ResponseSpec(PushAccepted, description=accepted, generate_examples=False),
        **{
            status: ResponseSpec(HttpError, description=description, generate_examples=False)
            for status, description in (
                (401, "Missing or wrong push API key (unauthorized)"),
                (413, "Body over 64 KiB (payload_too_large)"),
                (422, "Not JSON, wrong shape, a repeated key or too deep (invalid_payload)"),
                (503, "Redis unreachable (push_unavailable)"),
            )
        },
    }


def push_route(
    api_key: str, provide_bus: Callable[[], PushBus], previous_key: str = ""
) -> HTTPRouteHandler:
    """``POST /internal/push``: exists only when PUSH_API_KEY is set (otherwise 404).

    Only the raw path ``/internal/push`` reaches it. Litestar routes on the decoded,
    normalised path, so ``/%69nternal/push``, ``/internal%2Fpush``, ``//internal/push`` and
    ``/internal/push/`` would all arrive here, past a load balancer's rule on the raw
    prefix ``/internal/``; they get 404 instead, before the key is looked at (the route does
    not exist there).

    ``previous_key`` (PUSH_PREVIOUS_API_KEY): during a rotation, the former key is accepted
    too. Both are compared, always, in constant time."""
    keys = [f"Bearer {key}".encode() for key in (api_key, previous_key) if key]
    exact_path = PUSH_PATH.encode()

    def require_exact_path(
        connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
    ) -> None:
        # uvicorn always sends raw_path; a server that does not cannot show the path as sent,
        # and then the route is not there either.
        if connection.scope.get("raw_path") != exact_path:
            raise NotFoundException("Not found")

    def require_key(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        given = connection.headers.get("authorization", "").encode()
        # Every key is compared (no early exit): the time taken says nothing about which.
        matches = [hmac.compare_digest(given, key) for key in keys]
        if not any(matches):
            raise NotAuthorizedException("Missing or wrong push API key")

    @post(
        PUSH_PATH,
        guards=[require_exact_path, require_key],
        status_code=202,
        request_max_body_size=MAX_PUSH_BYTES,
        exception_handlers={HTTPException: gateway_errors},
        operation_class=_PushOperation,
        responses=_push_responses(),
        security=[{PUSH_AUTH: []}],
        operation_id="push",
        summary="Push a message to every open connection of a user, on every instance",
        description=(
            "Authorization: Bearer <PUSH_API_KEY>. Every open connection of the user receives "
            '{"type":"push","payload":<payload>}. 401 wrong or missing key, 413 body over '
            "64 KiB, 422 bad body (not JSON, wrong shape, a key repeated in one object, or "
            f"nested deeper than {MAX_PUSH_DEPTH} levels), 503 Redis unreachable."
        ),
    )
    async def push(
        request: Request[Any, Any, Any],
    ) -> Response[PushAccepted] | Response[HttpError]:
        try:
            data = parse_push(await request.body())  # 413 past MAX_PUSH_BYTES
        except InvalidPush as exc:
            return _error(422, f"Invalid push: {exc}")
        try:
            count = await provide_bus().publish(data.userId, msgspec.json.encode(data.payload))
        except PushUnavailable as exc:
            return _error(503, f"Push unavailable: {exc}", PUSH_UNAVAILABLE)
        return Response(PushAccepted(data.userId, count), status_code=202)

    return push
