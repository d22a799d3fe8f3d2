"""The options of one scale run (``python -m bench.scale --help``), with their defaults."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from bench.scale.system import MAX_PER_PROCESS


@dataclass(frozen=True)
class Options:
    workers: int = 2
    connections: int = 25_000
    rate: float = 2_000.0  # connects started per second, all client processes together
    hold: float = 60.0  # s held idle before measuring
    heartbeat: float = 15.0  # the gateway's WS_HEARTBEAT_INTERVAL, s
    ping_tolerance: float = 1.0  # s past the interval before a ping counts as late
    per_process: int = MAX_PER_PROCESS
    in_flight: int = 500  # handshakes under way per client process at most
    # Connects stop being started at this many times the planned ramp (rate x connections):
    # past 250,000 on 2 cores the connect rate falls to ~100/s (bench/README.md).
    ramp_budget: float = 3.0
    handshake_timeout: float = 10.0
    users: int = 1_000  # distinct users (tokens) the connections share
    probe_rate: float = 10.0  # application pings a second from the probe during the hold
    out: Path | None = None
    log: Path | None = None  # the gateway's log (when started here)
    port: int | None = None  # attach to a gateway on this port ...
    pid: int | None = None  # ... whose supervisor is this process
    terminate: bool = False  # SIGTERM an attached gateway at the end too
    limit: bool = False  # the too-few-workers run: the report judges the refusals
    jwt_secret: str | None = None  # an attached gateway's JWT_SECRET
    gateway_env: dict[str, str] = field(default_factory=dict)

    @property
    def attached(self) -> bool:
        return self.port is not None


def parse(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale",
        description=(
            "Hold N idle authenticated WebSockets on kalami-gateway serve --workers W (stub "
            "backend, Redis), from client processes of their own; measure what they cost and "
            "how the handshakes went; close them; stop the gateway. See bench/README.md, Scale."
        ),
    )
    d = Options()
    add = parser.add_argument
    add("--workers", type=int, help=f"gateway worker processes (default {d.workers}; --limit: 1)")
    add(
        "--connections",
        "-n",
        type=int,
        help=f"connections to open (default {d.connections}; 25k, 100k, 200k, 300k)",
    )
    add("--rate", type=float, default=d.rate, help="connects started per second, in all")
    add("--hold", type=float, help=f"seconds held idle (default {d.hold:.0f}; --limit: 20)")
    add(
        "--heartbeat",
        type=float,
        default=d.heartbeat,
        help="WS_HEARTBEAT_INTERVAL in seconds (an attached gateway's own)",
    )
    add("--ping-tolerance", type=float, default=d.ping_tolerance, help="s a ping may be late")
    add("--per-process", type=int, default=d.per_process, help="sockets per client process")
    add("--in-flight", type=int, default=d.in_flight, help="handshakes at once per process")
    add(
        "--ramp-budget",
        type=float,
        default=d.ramp_budget,
        help=f"stop starting connects past this many times the planned ramp ({d.ramp_budget:g})",
    )
    add("--handshake-timeout", type=float, default=d.handshake_timeout, help="seconds")
    add("--users", type=int, default=d.users, help="distinct users the connections share")
    add("--probe-rate", type=float, default=d.probe_rate, help="probe pings per second")
    add("--out", type=Path, help="JSON results file (default bench/results/scale-*.json)")
    add("--log", type=Path, help="the started gateway's log (default: beside the JSON)")
    add("--port", type=int, help="attach to the gateway on 127.0.0.1:PORT instead of starting")
    add("--pid", type=int, help="with --port: the attached gateway's supervisor pid")
    add("--terminate", action="store_true", help="SIGTERM an attached gateway at the end")
    add("--jwt-secret", help="an attached gateway's JWT_SECRET (default: the bench's)")
    add(
        "--limit",
        action="store_true",
        help="too few workers for the load (default 1 worker, 25,000 connections, 20 s hold): "
        "the report judges how the connections past the ceiling were refused",
    )
    add(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="another setting for the started gateway (repeatable)",
    )
    args = parser.parse_args(argv)
    if args.port is not None and args.pid is None:
        parser.error("--port needs --pid (the supervisor's, for its workers' figures)")
    for item in args.env:
        if "=" not in item:
            parser.error(f"--env {item!r}: expected NAME=VALUE")
    return Options(
        workers=args.workers or (1 if args.limit else d.workers),
        connections=args.connections or d.connections,
        rate=args.rate,
        hold=args.hold if args.hold is not None else (20.0 if args.limit else d.hold),
        heartbeat=args.heartbeat,
        ping_tolerance=args.ping_tolerance,
        per_process=args.per_process,
        in_flight=args.in_flight,
        ramp_budget=args.ramp_budget,
        handshake_timeout=args.handshake_timeout,
        users=args.users,
        probe_rate=args.probe_rate,
        out=args.out,
        log=args.log,
        port=args.port,
        pid=args.pid,
        terminate=args.terminate,
        limit=args.limit,
        jwt_secret=args.jwt_secret,
        gateway_env=dict(item.split("=", 1) for item in args.env),
    )
