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
from typing import Any, TypeVar, cast

import websockets.http11
from dependency_injector import providers
from litestar import Litestar
from litestar.di import Provide

from kalami_gateway.adapters.asgi import ASGIApp, Receive, Scope, Send
from kalami_gateway.adapters.clock import run_every
from kalami_gateway.adapters.http_edge import CorsPolicy, HttpEdge
from kalami_gateway.adapters.http_routes import (
    KNOWN_ROUTES,
    health,
    index,
    metrics,
    readiness,
    stats,
)
from kalami_gateway.adapters.metrics import PrometheusMetrics
from kalami_gateway.adapters.websocket import ws_route
from kalami_gateway.app.container import Container
from kalami_gateway.app.logs import configure_logging
from kalami_gateway.app.settings import Settings, SettingsError, load_settings
from kalami_gateway.domain.ports import Backend, ConnectionRegistry
from kalami_gateway.domain.service import GatewayService

log = logging.getLogger(__name__)
T = TypeVar("T")

# The expiry ticker runs at least this often, whatever the heartbeat interval.
MAX_EXPIRY_TICK_SECONDS = 1.0


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
        self.registry: ConnectionRegistry = container.registry()
        self.metrics: PrometheusMetrics = container.metrics()
        self._proxy = container.proxy()
        self._service: GatewayService | None = None
        self._backend: Backend | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._litestar = Litestar(
            route_handlers=[
                index,
                health,
                readiness,
                stats,
                metrics,
                ws_route(self.provide_service),
            ],
            dependencies={
                "backend": Provide(self.provide_backend, sync_to_thread=False),
                "registry": Provide(self.provide_registry, sync_to_thread=False),
                "prometheus": Provide(self.provide_metrics, sync_to_thread=False),
            },
            on_startup=[self._startup],
            after_exception=[_log_exception],
            on_shutdown=[self._shutdown],
            openapi_config=None,
            logging_config=None,
        )
        self._edge = HttpEdge(
            # Litestar's own ASGI types are narrower TypedDicts; the call is plain ASGI.
            cast("ASGIApp", self._litestar),
            self._proxy,
            CorsPolicy(settings.cors_origins),
            self.metrics.http_request,
            KNOWN_ROUTES,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._edge(scope, receive, send)

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

    def provide_registry(self) -> ConnectionRegistry:
        return self.registry

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
        self._service = await _resolve(self.container.service)
        await self._proxy.start()
        tick = min(self.settings.heartbeat_interval, MAX_EXPIRY_TICK_SECONDS)
        self._ticker = asyncio.create_task(run_every(tick, self._service.expire_tokens))
        log.info(
            "gateway_started",
            extra={
                "backend_mode": self.settings.backend_mode,
                "backend_url": self.settings.backend_url,
            },
        )

    async def _shutdown(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        # Under plain uvicorn the sockets are already closed (1012) by now; this still ends
        # their sessions at the backend.
        await self.drain()
        await self._proxy.close()
        shut = self.container.shutdown_resources()
        if shut is not None:
            await shut
        log.info("gateway_stopped")


async def _log_exception(exc: Exception, scope: Any) -> None:
    log.error("unhandled_exception", exc_info=exc, extra={"path": scope.get("path")})


# The handshake's request line carries the token. websockets caps a line at 8192 bytes and
# uvicorn's websockets-sansio never sends the 414 it queues (the client just times out), so
# an over-long token would hang instead of getting 4002. 16 KiB lets every token up to the
# auth policy's 8 KB cap reach the app and be refused there with a close code.
# (This is websockets' documented WEBSOCKETS_MAX_LINE_LENGTH, applied after import.)
HANDSHAKE_LINE_LIMIT = 16384


def _allow_long_handshake_lines() -> None:
    websockets.http11.MAX_LINE_LENGTH = max(websockets.http11.MAX_LINE_LENGTH, HANDSHAKE_LINE_LIMIT)


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
    _allow_long_handshake_lines()
    if container is None:
        container = Container(settings=settings)
    return GatewayApp(settings, container)
