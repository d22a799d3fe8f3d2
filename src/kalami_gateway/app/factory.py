"""The ASGI application factory: ``create_app(settings=None, container=None)``.

Works under ``kalami-gateway serve`` and under plain ``uvicorn --factory
kalami_gateway.app:create_app``. Nothing is built at import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import sys
from typing import Any, Final, TypeVar, cast

from dependency_injector import providers
from litestar import Litestar
from litestar.di import Provide
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.openapi.spec import Components

from kalami_gateway import __version__
from kalami_gateway.adapters.asgi import ASGIApp, Receive, Scope, Send, send_json_error
from kalami_gateway.adapters.capacity import SocketCapacity
from kalami_gateway.adapters.clock import run_every
from kalami_gateway.adapters.errors import API_NOT_SERVED
from kalami_gateway.adapters.http import (
    ADMIN_PATHS,
    ASYNCAPI_PATH,
    KNOWN_ROUTES,
    PUSH_PATH,
    CorsPolicy,
    HttpEdge,
    ProxyCall,
    SameOrigin,
    SendLimits,
    asyncapi_route,
    gateway_errors,
    health,
    index_route,
    metrics,
    push_route,
    readiness,
    security_schemes,
    stats,
    ws_route,
)
from kalami_gateway.adapters.jwt_decoder import mint_token
from kalami_gateway.adapters.metrics import PrometheusMetrics
from kalami_gateway.adapters.playground import PAGE_PATH, PLAYGROUND_ROUTES, playground_routes
from kalami_gateway.adapters.redis import RENEW_SECONDS
from kalami_gateway.adapters.server import allow_long_handshake_lines
from kalami_gateway.app.container import Container
from kalami_gateway.app.logs import configure_logging
from kalami_gateway.app.settings import Settings, SettingsError, load_settings
from kalami_gateway.application.service import GatewayService
from kalami_gateway.domain.ports import Backend, ConnectionDirectory, PushBus, SessionParking

log = logging.getLogger(__name__)
T = TypeVar("T")

# The expiry ticker runs at least this often, whatever the heartbeat interval.
MAX_EXPIRY_TICK_SECONDS = 1.0
# Parked sessions whose grace has lapsed are looked for this often (by every instance).
PARKED_SWEEP_SECONDS = 1.0


async def _resolve(provider: providers.Provider[T]) -> T:
    """A provider's instance; async resources make dependent providers return awaitables."""
    value: Any = provider()
    if inspect.isawaitable(value):
        value = await value
    resolved: T = value
    return resolved


class GatewayApp:
    """The ASGI app uvicorn serves, plus ``drain`` for a graceful shutdown."""

    def __init__(self, settings: Settings, container: Container) -> None:
        self.settings = settings
        self.container = container
        self.metrics: PrometheusMetrics = container.metrics()
        self.capacity: SocketCapacity = container.capacity()
        self._proxy = container.proxy()
        self._service: GatewayService | None = None
        self._backend: Backend | None = None
        self._directory: ConnectionDirectory | None = None
        self._push_bus: PushBus | None = None
        self._tasks: list[asyncio.Task[None]] = []
        send_limits = SendLimits(settings.ws_send_buffer_bytes, settings.ws_send_timeout_ms / 1000)
        origins = SameOrigin(settings.trusted_proxies)
        routes = {"api": "/api/{path}"} if settings.backend_mode == "http" else {}
        if settings.push_api_key:
            routes["push"] = PUSH_PATH
        if settings.playground_enabled:
            routes["playground"] = PAGE_PATH
        handlers = [
            index_route(routes, settings.admin_port),
            health,
            readiness,
            stats,
            metrics,
            asyncapi_route(),
            ws_route(self.provide_service, send_limits, origins, container.tracing()),
        ]
        if settings.push_api_key:
            handlers.append(
                push_route(
                    settings.push_api_key, self.provide_push_bus, settings.push_previous_api_key
                )
            )
        if settings.playground_enabled:
            secret = settings.jwt_secret
            handlers += playground_routes(
                settings.backend_mode == "stub",
                lambda sub, exp: mint_token(secret, sub, exp),
                origins.judge,
            )
        self._litestar = Litestar(
            route_handlers=handlers,
            dependencies={
                "backend": Provide(self.provide_backend, sync_to_thread=False),
                "directory": Provide(self.provide_directory, sync_to_thread=False),
                "service": Provide(self.provide_service, sync_to_thread=False),
                "prometheus": Provide(self.provide_metrics, sync_to_thread=False),
                "cluster": Provide(self.provide_cluster_mode, sync_to_thread=False),
                "stub": Provide(self.provide_stub_mode, sync_to_thread=False),
            },
            on_startup=[self._startup],
            after_exception=[_log_exception],
            on_shutdown=[self._shutdown],
            exception_handlers={HTTPException: gateway_errors, Exception: gateway_errors},
            openapi_config=openapi_config(),
            logging_config=None,
        )
        # Stub mode talks to no backend, /api included: the playground mints tokens for any
        # user, and a backend sharing JWT_SECRET behind /api would take them as real ones.
        api: ProxyCall = self._proxy if settings.backend_mode == "http" else no_api_in_stub_mode
        self._edge = HttpEdge(
            # Litestar's own ASGI types are narrower TypedDicts; the call is plain ASGI.
            cast("ASGIApp", self._litestar),
            api,
            CorsPolicy(settings.cors_origins),
            self.metrics.http_request,
            (*KNOWN_ROUTES, *PLAYGROUND_ROUTES),
            same_origin_only=(PAGE_PATH,),
            schema=(SCHEMA_PREFIX, SCHEMA_PATHS),
            admin=(settings.admin_port, ADMIN_PATHS) if settings.admin_port else None,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._edge(scope, receive, send)

    @property
    def asgi(self) -> ASGIApp:
        """The outermost ASGI layer itself, for the gateway's own server to call: every
        coroutine in a WebSocket's suspended chain costs memory for the connection's life and
        a resume on every message (bench/README.md, "What one idle connection costs")."""
        return self._edge

    @property
    def service(self) -> GatewayService:
        if self._service is None:
            raise RuntimeError("the gateway has not started (lifespan startup has not run)")
        return self._service

    def provide_service(self) -> GatewayService:
        return self.service

    def provide_backend(self) -> Backend:
        if self._backend is None:
            raise RuntimeError("the gateway has not started (lifespan startup has not run)")
        return self._backend

    @property
    def directory(self) -> ConnectionDirectory:
        if self._directory is None:
            raise RuntimeError("the gateway has not started (lifespan startup has not run)")
        return self._directory

    def provide_directory(self) -> ConnectionDirectory:
        return self.directory

    def provide_push_bus(self) -> PushBus:
        if self._push_bus is None:
            raise RuntimeError("the gateway has not started (lifespan startup has not run)")
        return self._push_bus

    def provide_cluster_mode(self) -> bool:
        return bool(self.settings.redis_url)

    def provide_stub_mode(self) -> bool:
        return self.settings.backend_mode == "stub"

    def provide_metrics(self) -> PrometheusMetrics:
        return self.metrics

    async def drain(self) -> None:
        """Close every WebSocket with 1001 and end open sessions (before the server stops)."""
        if self._service is not None:
            await self._service.drain()

    async def _startup(self) -> None:
        initialised = self.container.init_resources()
        if initialised is not None:
            await initialised
        self._backend = await _resolve(self.container.backend)
        self._directory = directory = await _resolve(self.container.directory)
        self._push_bus = push_bus = await _resolve(self.container.push_bus)
        parking: SessionParking = await _resolve(self.container.parking)
        self._service = service = await _resolve(self.container.service)
        await self._proxy.start()
        await directory.renew()  # joins the cluster (or notes that Redis is away)
        tick = min(self.settings.heartbeat_interval, MAX_EXPIRY_TICK_SECONDS)
        self._tasks = [
            asyncio.create_task(run_every(tick, service.expire_tokens)),
            asyncio.create_task(run_every(RENEW_SECONDS, directory.renew)),
            asyncio.create_task(push_bus.run(service.deliver_push)),
            asyncio.create_task(parking.run(service)),
            asyncio.create_task(run_every(PARKED_SWEEP_SECONDS, service.expire_parked)),
        ]
        log.info(
            "gateway_started",
            extra={
                "backend_mode": self.settings.backend_mode,
                "backend_url": self.settings.backend_url,
            },
        )

    async def _shutdown(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Under plain uvicorn the sockets are already closed (1012) by now; this still ends
        # their sessions at the backend.
        await self.drain()
        if self._directory is not None:
            await self._directory.leave()
        await self._proxy.close()
        shut = self.container.shutdown_resources()
        if shut is not None:
            await shut
        log.info("gateway_stopped")


STUB_MODE_API_ERROR = "No backend: BACKEND_MODE=stub does not proxy /api"


async def no_api_in_stub_mode(scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
    """``/api`` with ``BACKEND_MODE=stub``: answered at once, nothing forwarded anywhere."""
    await send_json_error(send, 404, STUB_MODE_API_ERROR, code=API_NOT_SERVED)


SCHEMA_PREFIX: Final = "/schema"
SCHEMA_PATH: Final = "/schema/openapi.json"
# Everything served under /schema: the OpenAPI schema and the WebSocket's AsyncAPI document.
SCHEMA_PATHS: Final = (SCHEMA_PATH, ASYNCAPI_PATH)


def openapi_config() -> OpenAPIConfig:
    """The schema at /schema/openapi.json (the push API is documented there), and nothing
    else of Litestar's under /schema (the AsyncAPI document beside it is a route of the
    gateway's own): Litestar's Swagger UI, ReDoc and the rest load their scripts from a
    CDN, and a gateway must not make an operator's browser fetch code from a third party.

    Each route declares every status it answers, typed (tests/integration/test_openapi.py
    drives each into each); what any path may be answered, whatever its route, is said once,
    in the description."""
    return OpenAPIConfig(
        title="Kalami Gateway",
        version=__version__,
        path=SCHEMA_PREFIX,
        render_plugins=[JsonRenderPlugin()],
        description=(
            "The gateway's own HTTP routes. Every error the gateway answers itself has one "
            'body, HttpError: {"error": "<for a person>", "code": "<for a program>"} (the '
            'codes: README, "Errors"). Each route declares its own answers; besides them, '
            "any request may be answered 400 invalid_host (Host missing, repeated or "
            "malformed), 404 not_found (no such route), 405 method_not_allowed, or, before it "
            "is read, 408, 414 or 431, each with that body. /ws (a WebSocket, opened with a "
            "learner's JWT: OpenAPI describes no WebSocket) is described by the AsyncAPI "
            "document at /schema/asyncapi.json, and /api/* (relayed to the backend, its "
            "answers its own) in the README."
        ),
        components=Components(security_schemes=dict(security_schemes())),
    )


async def _log_exception(exc: Exception, scope: Any) -> None:
    if isinstance(exc, HTTPException) and exc.status_code < 500:
        return  # a client's mistake, answered as such: not the gateway's error
    log.error("unhandled_exception", exc_info=exc, extra={"path": scope.get("path")})


def create_app(settings: Settings | None = None, container: Container | None = None) -> GatewayApp:
    """Build the gateway. Tests pass their own settings, or a container with overrides."""
    if settings is None:
        try:
            settings = load_settings()
        except SettingsError as exc:
            # Under plain uvicorn this is start-up: one line for the operator, no traceback.
            print(f"kalami-gateway: configuration error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    configure_logging(settings.log_level, settings.log_format)
    allow_long_handshake_lines()
    if container is None:
        container = Container(settings=settings)
    return GatewayApp(settings, container)
