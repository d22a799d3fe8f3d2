"""What the machine must allow before a scale run, checked up front: each problem is named
with its fix. Nothing here changes the system, so the run needs no root; only a fix may."""

from __future__ import annotations

import os
import resource
import socket
from dataclasses import dataclass
from pathlib import Path

# Sockets a client process may hold: every process here is hard-limited to 20,000 open files,
# and a client needs a few dozen for itself (the interpreter, its pipe, the event loop).
MAX_PER_PROCESS = 19_000
_CLIENT_OWN_FILES = 100
# Memory a connection costs, both ends and the kernel (the gateway's ~15 KB, the client's
# few KB, ~4 KB of kernel socket state per end): the run refuses to start without it.
_BYTES_PER_CONNECTION = 32 * 1024
_GATEWAY_BYTES_PER_WORKER = 100 << 20


def _sysctl(name: str) -> str:
    return Path("/proc/sys", *name.split(".")).read_text().strip()


@dataclass(frozen=True)
class Need:
    connections: int
    per_process: int
    workers: int
    starting_gateway: bool


def problems(need: Need) -> list[str]:
    """Every reason the run cannot work here, each with what fixes it; empty: go."""
    found: list[str] = []
    low, high = map(int, _sysctl("net.ipv4.ip_local_port_range").split())
    if high - low + 1 < need.per_process:
        found.append(
            f"net.ipv4.ip_local_port_range is {low}-{high}: {high - low + 1} ports per source "
            f"address, fewer than the {need.per_process} sockets of a client process. Fix (as "
            "root): sysctl -w net.ipv4.ip_local_port_range='1024 65000', or a smaller "
            "--per-process"
        )
    file_max = int(_sysctl("fs.file-max"))
    wanted = need.connections * 2 + 20_000
    if file_max < wanted:
        found.append(
            f"fs.file-max is {file_max}: both ends of {need.connections} connections need "
            f"~{wanted} open files on this machine. Fix (as root): sysctl -w fs.file-max={wanted}"
        )
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need.per_process + _CLIENT_OWN_FILES:
        found.append(
            f"the hard open-file limit is {hard}: a client process needs "
            f"{need.per_process + _CLIENT_OWN_FILES}. Fix: a smaller --per-process (at most "
            f"{hard - _CLIENT_OWN_FILES}), or raise the limit (ulimit -Hn, limits.conf; root)"
        )
    if need.per_process > MAX_PER_PROCESS:
        found.append(f"--per-process {need.per_process} is over {MAX_PER_PROCESS}")
    tracking = Path("/proc/sys/net/netfilter/nf_conntrack_count")
    if tracking.exists() and int(tracking.read_text()) > 0:
        ceiling = int(_sysctl("net.netfilter.nf_conntrack_max"))
        if ceiling < need.connections * 2:
            found.append(
                f"connection tracking is on and net.netfilter.nf_conntrack_max is {ceiling}: "
                f"{need.connections} connections would fill it and the kernel would drop "
                "packets. Fix (as root): sysctl -w "
                f"net.netfilter.nf_conntrack_max={need.connections * 2 + 65536}"
            )
    available = _mem_available()
    wanted_bytes = need.connections * _BYTES_PER_CONNECTION
    if need.starting_gateway:
        wanted_bytes += need.workers * _GATEWAY_BYTES_PER_WORKER
    if available < wanted_bytes:
        found.append(
            f"{available >> 20} MiB of memory available, ~{wanted_bytes >> 20} MiB needed for "
            f"{need.connections} connections: fewer --connections, or free memory first"
        )
    if not _redis_answers():
        found.append(
            "no Redis at 127.0.0.1:6379 (the workers share its directory): start redis-server"
        )
    return found


def _mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def _redis_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=3) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def can_bind(address: str) -> bool:
    """Whether this loopback source address can be bound here (127.0.0.0/8 is all local on
    Linux's lo, unless someone changed that)."""
    try:
        with socket.socket() as probe:
            probe.bind((address, 0))
    except OSError:
        return False
    return True


def running_as_root() -> bool:
    return os.geteuid() == 0
