"""The bodies of the gateway's own routes, typed (what a push sends, what each route answers):
what /schema/openapi.json shows (every error the gateway answers itself is
``adapters.errors.HttpError``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec


class ServiceInfo(msgspec.Struct, frozen=True):
    """``GET /``: the service, and the routes this configuration serves."""

    name: str
    version: str
    endpoints: dict[str, str]  # what each route is for -> its path, as this gateway serves


class Health(msgspec.Struct, frozen=True):
    """``GET /health``: always ``healthy`` while the process answers."""

    status: Literal["healthy"]
    service: str
    version: str


ReadyStatus = Literal["ready", "degraded", "not ready"]
BackendState = Literal["connected", "unhealthy", "unreachable", "stub"]
RedisState = Literal["connected", "unreachable"]


class Readiness(msgspec.Struct, frozen=True, omit_defaults=True):
    """200 when ``status`` is ``ready``, otherwise 503 with the same shape."""

    status: ReadyStatus
    backend: BackendState
    api: Literal["not served"] | msgspec.UnsetType = msgspec.UNSET  # BACKEND_MODE=stub only
    redis: RedisState | msgspec.UnsetType = msgspec.UNSET  # with REDIS_URL only


class ConnectionStats(msgspec.Struct, frozen=True, rename="camel"):
    """This process's WebSockets (with ``--workers``, the worker that answered: ``pid``; each
    worker's are in ``processes``, the group's sums in /metrics)."""

    connections: int
    users: int
    accepted_total: int
    peak_connections: int
    pid: int
    scope: Literal["process"] = "process"


class ClusterStats(msgspec.Struct, frozen=True):
    """Every live instance together (this one alone without Redis, or while it is away)."""

    instances: int
    connections: int
    users: int


class SessionStats(msgspec.Struct, frozen=True):
    # Waiting for their client to resume (cluster-wide on Redis; null while it is away).
    parked: int | None


class ProcessStats(msgspec.Struct, frozen=True, rename="camel"):
    """One serving process of this ``serve`` (with ``--workers``, each live worker, as it last
    flushed its figures: at most a second old)."""

    pid: int
    connections: int  # its open WebSockets
    client_sockets: int  # HTTP and WebSocket
    ceiling: int  # client sockets it holds before a new WebSocket handshake is answered 503
    refused: int  # WebSocket handshakes answered 503 at the ceiling since it started
    open_files: int | None  # from /proc (null where it cannot be read)
    open_files_limit: int | None


class Stats(msgspec.Struct, frozen=True):
    """``GET /stats``."""

    websocket: ConnectionStats
    cluster: ClusterStats
    sessions: SessionStats
    processes: list[ProcessStats]  # by pid
    # How far the busiest process's WebSockets are above the mean over ``processes``, in
    # percent (0 with one process).
    spread: float


class PushRequest(msgspec.Struct, frozen=True):
    """What the backend sends to reach a learner's devices."""

    userId: Annotated[str, msgspec.Meta(min_length=1, description="The learner (a token's sub)")]
    payload: Annotated[dict[str, Any], msgspec.Meta(description="Any JSON object")]


class PushAccepted(msgspec.Struct, frozen=True):
    """``POST /internal/push``, 202: published to every instance."""

    userId: str
    connections: int  # the user's open connections in the directory when it was published
