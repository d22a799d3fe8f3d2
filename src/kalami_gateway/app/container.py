"""The composition root: which adapter implements which port, built from the settings."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

from dependency_injector import containers, providers

from kalami_gateway.adapters.backend import StubBackend
from kalami_gateway.adapters.capacity import (
    Headroom,
    SocketCapacity,
    connection_ceiling,
    open_files_limit,
)
from kalami_gateway.adapters.clock import SystemClock
from kalami_gateway.adapters.jwt_decoder import PyJwtDecoder, ResignedCredentials
from kalami_gateway.adapters.memory import InMemoryDirectory, InMemoryParking, LocalPushBus
from kalami_gateway.adapters.metrics import PrometheusMetrics
from kalami_gateway.adapters.proxy import POOL_SIZE, ApiProxy
from kalami_gateway.adapters.tracing import OtelTracing, tracer_provider
from kalami_gateway.app.settings import Settings
from kalami_gateway.application import GatewayService, ServiceLimits, SessionCleanup
from kalami_gateway.domain.auth import AuthPolicy
from kalami_gateway.domain.instance import InstanceConnections
from kalami_gateway.domain.parking import ParkingRules
from kalami_gateway.domain.ports import Backend, ConnectionDirectory, PushBus, SessionParking

if TYPE_CHECKING:
    import httpx
    from redis.asyncio import Redis

# The HTTP backend's modules (httpx, aiohttp) are imported only with BACKEND_MODE=http, and
# the Redis adapters (redis-py) only with REDIS_URL: each costs every other process its
# memory for nothing (docs/operations.md, "Memory per worker").


async def backend_client(
    base_url: str, timeout_seconds: float, backend_mode: str
) -> AsyncIterator[httpx.AsyncClient | None]:
    """The backend client's lifecycle (None with the stub backend): opened at start-up,
    closed at shutdown."""
    if backend_mode != "http":
        yield None
        return
    from kalami_gateway.adapters.backend import build_client

    client = build_client(base_url, timeout_seconds)
    try:
        yield client
    finally:
        await client.aclose()


def httpx_backend(client: httpx.AsyncClient, tracing: OtelTracing | None) -> Backend:
    from kalami_gateway.adapters.backend import HttpxBackend

    return HttpxBackend(client, tracing=tracing)


async def redis_connection(url: str) -> AsyncIterator[Redis | None]:
    """The Redis client's lifecycle (None in single-process mode): closed at shutdown."""
    if not url:
        yield None
        return
    from kalami_gateway.adapters.redis import redis_client

    client = redis_client(url)
    try:
        yield client
    finally:
        await client.aclose()


def tracing_from_environment() -> Iterator[OtelTracing | None]:
    """Tracing (None: off) as the standard OTEL_* variables say (``adapters/tracing/setup.py``
    states the rule); at shutdown, what is still batched is exported."""
    provider = tracer_provider(os.environ)
    if provider is None:
        yield None
        return
    tracing = OtelTracing(provider)
    try:
        yield tracing
    finally:
        tracing.shutdown()


def redis_instance_id() -> str:
    from kalami_gateway.adapters.redis import new_instance_id

    return new_instance_id()


def redis_directory(client: Redis, prefix: str, instance_id: str) -> ConnectionDirectory:
    from kalami_gateway.adapters.redis import RedisDirectory

    return RedisDirectory(client, prefix, instance_id=instance_id)


def redis_parking(
    client: Redis, prefix: str, instance_id: str, rules: ParkingRules
) -> SessionParking:
    from kalami_gateway.adapters.redis import RedisParking

    return RedisParking(client, prefix, instance_id, rules)


def redis_push_bus(client: Redis, prefix: str) -> PushBus:
    from kalami_gateway.adapters.redis import RedisPushBus

    return RedisPushBus(client, prefix)


def cluster_mode(redis_url: str) -> str:
    """``redis`` (a cluster member) when REDIS_URL is set, else ``memory`` (one process)."""
    return "redis" if redis_url else "memory"


def restart_parks(redis_url: str, resume_grace: float) -> bool:
    """A shutdown parks sessions for another instance (1012) only when one can resume them."""
    return bool(redis_url) and resume_grace > 0


def streams(utterance_upload: str) -> bool:
    """UTTERANCE_UPLOAD=stream: each utterance goes to the backend while it is recorded."""
    return utterance_upload == "stream"


def turn_wait(shutdown_timeout: float) -> float:
    """How long a restart lets turns in flight finish: the shutdown's budget less a second
    for closing up."""
    return max(0.0, shutdown_timeout - 1.0)


def socket_origins(cors_origins: tuple[str, ...]) -> frozenset[str] | None:
    """The origins a browser may open /ws from: CORS_ORIGINS, or any (None) with ``*``."""
    return None if "*" in cors_origins else frozenset(cors_origins)


def socket_capacity(settings: Settings) -> SocketCapacity:
    """This process's client-socket ceiling: MAX_CLIENT_SOCKETS, or its open-file limit less
    what it keeps for itself (``adapters/capacity.py``)."""
    upstream = redis_pool = 0
    if settings.backend_mode == "http":
        from kalami_gateway.adapters.backend import MAX_BACKEND_CONNECTIONS

        # The /api pool and as many retiring beside it, and the backend client's.
        upstream = 2 * POOL_SIZE + MAX_BACKEND_CONNECTIONS
    if settings.redis_url:
        from kalami_gateway.adapters.redis import REDIS_POOL_SIZE

        redis_pool = REDIS_POOL_SIZE
    headroom = Headroom(
        listeners=2 if settings.admin_port else 1, upstream=upstream, redis=redis_pool
    )
    ceiling = connection_ceiling(open_files_limit(), headroom, settings.max_client_sockets)
    return SocketCapacity(ceiling)


class Container(containers.DeclarativeContainer):
    settings = providers.Dependency(instance_of=Settings)

    clock = providers.Singleton(SystemClock)
    token_decoder = providers.Singleton(
        PyJwtDecoder,
        secret=settings.provided.jwt_secret,
        previous=settings.provided.jwt_previous_secret,
    )
    auth = providers.Singleton(
        AuthPolicy,
        decoder=token_decoder,
        leeway_seconds=settings.provided.jwt_leeway,
        allowed_origins=providers.Callable(socket_origins, settings.provided.cors_origins),
    )
    instance = providers.Singleton(InstanceConnections)
    capacity = providers.Singleton(socket_capacity, settings=settings)
    metrics = providers.Singleton(PrometheusMetrics, connections=instance, capacity=capacity)

    redis = providers.Resource(redis_connection, url=settings.provided.redis_url)
    mode = providers.Callable(cluster_mode, settings.provided.redis_url)
    instance_id = providers.Singleton(redis_instance_id)
    directory = providers.Selector(
        mode,
        memory=providers.Singleton(InMemoryDirectory),
        redis=providers.Singleton(
            redis_directory,
            client=redis,
            prefix=settings.provided.redis_key_prefix,
            instance_id=instance_id,
        ),
    )
    parking_rules = providers.Singleton(
        ParkingRules,
        grace=settings.provided.resume_grace,
        max_bytes=settings.provided.max_audio_bytes,
        max_parked_per_user=settings.provided.max_connections_per_user,
    )
    parking = providers.Selector(
        mode,
        memory=providers.Singleton(InMemoryParking, rules=parking_rules, clock=clock),
        redis=providers.Singleton(
            redis_parking,
            client=redis,
            prefix=settings.provided.redis_key_prefix,
            instance_id=instance_id,
            rules=parking_rules,
        ),
    )
    push_bus = providers.Selector(
        mode,
        memory=providers.Singleton(LocalPushBus, directory=directory),
        redis=providers.Singleton(
            redis_push_bus, client=redis, prefix=settings.provided.redis_key_prefix
        ),
    )

    tracing = providers.Resource(tracing_from_environment)
    http_client = providers.Resource(
        backend_client,
        base_url=settings.provided.backend_url,
        timeout_seconds=settings.provided.backend_timeout,
        backend_mode=settings.provided.backend_mode,
    )
    backend = providers.Selector(
        settings.provided.backend_mode,
        http=providers.Singleton(httpx_backend, client=http_client, tracing=tracing),
        stub=providers.Singleton(StubBackend),
    )
    credentials = providers.Singleton(ResignedCredentials, secret=settings.provided.jwt_secret)
    # Ends the backend sessions nobody owns any more (failed end calls, late creates).
    cleanup = providers.Singleton(
        SessionCleanup,
        backend=backend,
        metrics=metrics,
        clock=clock,
        backend_timeout=settings.provided.backend_timeout,
        retry_window=settings.provided.end_retry_window,
        credentials=credentials,
    )
    service = providers.Singleton(
        GatewayService,
        backend=backend,
        directory=directory,
        clock=clock,
        auth=auth,
        metrics=metrics,
        limits=providers.Singleton(
            ServiceLimits,
            max_message_bytes=settings.provided.max_message_bytes,
            max_audio_bytes=settings.provided.max_audio_bytes,
            max_reply_audio_bytes=settings.provided.reply_audio_max_bytes,
            max_connections_per_user=settings.provided.max_connections_per_user,
            backend_timeout=settings.provided.backend_timeout,
            end_retry_window=settings.provided.end_retry_window,
            token_expiry_warning=settings.provided.token_expiry_warning,
            message_rate=settings.provided.ws_message_rate,
            session_start_rate=settings.provided.session_start_rate,
            audio_rate=settings.provided.ws_audio_rate,
            resume_grace=settings.provided.resume_grace,
            restart_parks=providers.Callable(
                restart_parks, settings.provided.redis_url, settings.provided.resume_grace
            ),
            shutdown_turn_wait=providers.Callable(turn_wait, settings.provided.shutdown_timeout),
            stream_uploads=providers.Callable(streams, settings.provided.utterance_upload),
        ),
        credentials=credentials,
        cleanup=cleanup,
        instance=instance,
        parking=parking,
        tracing=tracing,
    )
    proxy = providers.Singleton(
        ApiProxy,
        backend_url=settings.provided.backend_url,
        timeout_seconds=settings.provided.backend_timeout,
        trusted_proxies=settings.provided.trusted_proxies,
        observe_latency=metrics.provided.proxy_latency,
        record_error=metrics.provided.backend_error,
        connections_per_client=settings.provided.api_connections_per_client,
        body_min_rate=settings.provided.api_body_min_rate,
        body_rate_grace=settings.provided.api_body_rate_grace,
        tracing=tracing,
    )
