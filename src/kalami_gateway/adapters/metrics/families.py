"""Every metric family the gateway exports — name, help, labels — written once.

Both layouts build from these (one process reading its own figures, or the workers of
``serve --workers N`` sharing a directory: ``shared.py``), so a scrape shows the same names,
labels and types under either. ``processes.py`` adds the standard ``process_*`` figures.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Histogram


class Family(NamedTuple):
    name: str
    help: str
    labels: tuple[str, ...] = ()


HTTP_REQUESTS: Final = Family(
    "kalami_http_requests", "HTTP requests by route and status.", ("route", "status")
)
PROXY_LATENCY: Final = Family(
    "kalami_proxy_request_duration_seconds",
    "Time from request to upstream response headers on /api.",
)
BACKEND_ERRORS: Final = Family("kalami_backend_errors", "Failed backend calls by kind.", ("kind",))
MESSAGES: Final = Family(
    "kalami_websocket_messages", "WebSocket messages received by type.", ("type",)
)
AUDIO_BYTES: Final = Family("kalami_audio_received_bytes", "Bytes of utterance audio received.")
CLOSED: Final = Family(
    "kalami_websocket_closed", "WebSocket connections closed, by reason.", ("reason",)
)
TURNS: Final = Family("kalami_voice_turns", "Voice turns by outcome.", ("outcome",))
TURN_LATENCY: Final = Family(
    "kalami_voice_turn_duration_seconds", "Time the backend took for one voice turn."
)
CONNECTIONS: Final = Family("kalami_websocket_connections", "Open WebSocket connections.")
# Distinct per process: summed over a group's workers, a user connected to two counts twice
# (kalami_cluster_users counts each once).
USERS: Final = Family("kalami_websocket_users", "Distinct users with an open connection.")
ACCEPTED: Final = Family(
    "kalami_websocket_connections_accepted",
    "Authenticated WebSocket connections accepted since start.",
)
CLEANUP: Final = Family(
    "kalami_backend_session_cleanup",
    "Background end calls for sessions no client owns: retry (an attempt), ended, "
    "gave_up (the retry window ran out), refused (the backend answered 401/403: final).",
    ("outcome",),
)
PARKING: Final = Family(
    "kalami_resumable_sessions",
    "Resumable sessions by event: parked (its connection went away), resumed, expired "
    "(ended after the grace, counted by the instance that ended it).",
    ("event",),
)
CLUSTER_INSTANCES: Final = Family(
    "kalami_cluster_instances", "Live gateway instances in the cluster."
)
CLUSTER_CONNECTIONS: Final = Family(
    "kalami_cluster_connections", "Open WebSocket connections across the cluster."
)
CLUSTER_USERS: Final = Family(
    "kalami_cluster_users", "Distinct users with an open connection across the cluster."
)
CLUSTER_REACHABLE: Final = Family(
    "kalami_cluster_reachable",
    "1 while this instance reaches the cluster's store (Redis), 0 while it is away (always 1 "
    "without Redis).",
)
# Each serving process's own figures, labelled with its pid (the open-file limit and the
# ceiling are per process: compare them per process); shared, a dead worker's go with it.
PROCESS_CLIENT_SOCKETS: Final = Family(
    "kalami_process_client_sockets",
    "Client sockets (HTTP and WebSocket) open in this process.",
    ("pid",),
)
PROCESS_CEILING: Final = Family(
    "kalami_process_connection_ceiling",
    "Client sockets this process holds before it answers a new WebSocket handshake 503.",
    ("pid",),
)
PROCESS_CONNECTIONS: Final = Family(
    "kalami_process_websocket_connections",
    "Open WebSocket connections of this process (the spread over a group's workers).",
    ("pid",),
)
PROCESS_REFUSED: Final = Family(
    "kalami_process_websocket_refused",
    "WebSocket handshakes this process answered 503 at its ceiling since it started "
    "(kalami_websocket_refused_total is the counter to alert on).",
    ("pid",),
)
REFUSED: Final = Family(
    "kalami_websocket_refused",
    "WebSocket handshakes answered 503 before any upgrade, by reason (ceiling: the process "
    "held its connection ceiling of client sockets).",
    ("reason",),
)
ACCEPT_ERRORS: Final = Family(
    "kalami_accept_errors",
    "Connections the kernel could not hand over for lack of file descriptors, by errno "
    "(EMFILE: the process's open-file limit, ENFILE: the system's).",
    ("errno",),
)
# Exported from the start at 0, so an alert sees the first increase.
REFUSAL_REASONS: Final = ("ceiling",)
ACCEPT_ERRNOS: Final = ("EMFILE", "ENFILE")
BUILD_INFO: Final = Family(
    "kalami_build_info", "The gateway's version, as a label (the value is always 1).", ("version",)
)

LATENCY_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
)
TURN_BUCKETS: Final = (0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60)


def counter(family: Family, registry: CollectorRegistry | None) -> Counter:
    return Counter(family.name, family.help, family.labels, registry=registry)


def histogram(
    family: Family, buckets: tuple[float, ...], registry: CollectorRegistry | None
) -> Histogram:
    return Histogram(family.name, family.help, family.labels, buckets=buckets, registry=registry)
