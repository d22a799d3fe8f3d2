"""The targets: the processes a benchmark run starts, measures and stops by pid, all on
127.0.0.1 — the gateway (``GatewayProcess``; ``UploadGateway`` in front of the upload
backend stand-in), the Node/Express stack it replaces (``NodeAnchor``), nginx as backend
stand-in and baseline (``Nginx``), the empty apps on the gateway's server stack
(``FloorServer``) — what ``/proc`` says about them (``cpu_seconds``, ``rss_kb``), and the
WebSocket engine the gateway runs unless one is named (``default_ws_engine``)."""

from bench.targets.empty_apps import FloorServer
from bench.targets.gateway import GatewayProcess, default_ws_engine
from bench.targets.local import BENCH_DIR, SECRET, LocalServer, free_port, wait_for_http
from bench.targets.nginx import Nginx
from bench.targets.node import NodeAnchor, install_node_anchor, node_anchor_missing
from bench.targets.proc import cpu_seconds, rss_kb
from bench.targets.tools import ensure_tools
from bench.targets.uploads import UploadBackend, UploadGateway

__all__ = [
    "BENCH_DIR",
    "SECRET",
    "FloorServer",
    "GatewayProcess",
    "LocalServer",
    "Nginx",
    "NodeAnchor",
    "UploadBackend",
    "UploadGateway",
    "cpu_seconds",
    "default_ws_engine",
    "ensure_tools",
    "free_port",
    "install_node_anchor",
    "node_anchor_missing",
    "rss_kb",
    "wait_for_http",
]
