"""What one scale run found, as plain dataclasses (the JSON is their ``asdict``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.scale.figures import Lateness, Spread
from bench.scale.gateway import Stopped
from bench.scale.probe import ProbeResult, StatsPolls


@dataclass
class WorkerFigures:
    pid: int
    connections: int  # ESTABLISHED sockets on the gateway's port that this process holds
    rss_kb: int
    pss_kb: int
    open_files: int
    open_file_limit: int
    idle_cpu_percent: float  # of one core, over the hold
    rss_idle_kb: int = 0  # before the first connection
    rss_after_close_kb: int | None = None


@dataclass
class Ramp:
    planned: int
    attempted: int
    client_processes: int
    outcomes: dict[str, int]
    failures: int
    silent_failures: int  # reset, closed, timed out, refused at TCP: no HTTP answer
    held: int  # welcomed and still open when the ramp ended
    dropped: dict[str, int]  # welcomed, then closed or lost by the gateway during the ramp
    seconds: float
    connects_per_s: float
    handshake_p50_ms: float  # the median of the processes' medians
    handshake_p99_ms: float  # the worst process's
    listen_overflows: int  # the kernel's TcpExt counters over the ramp (system-wide)
    listen_drops: int
    stats_polls: StatsPolls
    health_after: str  # GET /health after the ramp: its status, or the error
    metrics_after: str  # GET /metrics after the ramp: answered, or the error


@dataclass
class Hold:
    seconds: float
    heartbeat: float
    held: int  # open at the end of the hold (clients' count)
    dropped: dict[str, int]
    pings: Spread  # per connection during the hold
    ping_total: int
    lateness: Lateness
    overdue: int
    longest_silence_s: float
    workers_cpu_percent: float
    cpu_per_ping_us: float
    probe: ProbeResult


@dataclass
class Memory:
    gateway_rss_idle_kb: int  # supervisor and workers, before the first connection
    gateway_rss_kb: int  # ... while the connections are held
    gateway_pss_idle_kb: int
    gateway_pss_kb: int
    kb_per_connection: float  # RSS growth / connections held
    pss_kb_per_connection: float
    supervisor_rss_kb: int
    clients_rss_kb: int
    clients_kb_per_connection: float
    gateway_rss_after_close_kb: int | None = None


@dataclass
class Close:
    sent: int
    clean: int
    other: int
    unfinished: int
    dropped_before: int  # held sockets the gateway had closed or lost before the close
    seconds: float
    stats_zero_after_s: float | None  # None: /stats never came back to 0
    stats_left: int | None


@dataclass
class ScaleResult:
    date: str
    options: dict[str, Any]
    workers: int
    ramp: Ramp
    hold: Hold | None = None
    stats_cluster: int | None = None
    stats_expected: int = 0
    stats_exact: bool = False
    stats_instances: int | None = None
    spread_percent: float = 0.0
    per_worker: list[WorkerFigures] = field(default_factory=list)
    memory: Memory | None = None
    close: Close | None = None
    stop: Stopped | None = None
    metrics_lines: list[str] = field(default_factory=list)
    log_events: dict[str, int] = field(default_factory=dict)
    redis_keys_left: list[str] | None = None  # left under its prefix by the stopped gateway
    as_root: bool = False
    notes: list[str] = field(default_factory=list)
