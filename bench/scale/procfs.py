"""What ``/proc`` and the kernel's socket table say about the gateway's processes: memory
(RSS, PSS), open files, CPU time, the ESTABLISHED connections on the gateway's port that each
process holds, and the kernel's listen-queue counters."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
_ESTABLISHED_HEX = "01"


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def rss_kb(pid: int) -> int:
    return _status_kb(pid, "VmRSS")


def pss_kb(pid: int) -> int:
    """Proportional set size: shared pages split among their sharers (so the workers' sum is
    what they cost together, which RSS overstates)."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU of this process alone (not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def open_file_limit(pid: int) -> int:
    """The process's soft RLIMIT_NOFILE (0: unknown)."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    return 0


def socket_inodes(pid: int) -> set[int]:
    """The inodes of every socket the process has open."""
    inodes: set[int] = set()
    folder = f"/proc/{pid}/fd"
    for name in os.listdir(folder):
        try:
            target = os.readlink(f"{folder}/{name}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def children(pid: int) -> list[int]:
    """The process's direct children, by pid."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[1] == str(pid):
            found.append(int(entry.name))
    return sorted(found)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def established_inodes(port: int) -> set[int]:
    """The inodes of every ESTABLISHED TCP socket whose local port is ``port``: from the
    kernel's socket table through netlink (``ss``, filtered in the kernel, quick at 300,000),
    else from ``/proc/net/tcp`` and ``tcp6``."""
    if shutil.which("ss"):
        result = subprocess.run(
            ["ss", "-tnHe", "state", "established", f"( sport = :{port} )"],
            check=True,
            capture_output=True,
            text=True,
        )
        return set(_inodes_in_ss(result.stdout.splitlines()))
    return set(_inodes_in_proc_net(port))


def _inodes_in_ss(lines: Iterable[str]) -> Iterable[int]:
    for line in lines:
        for word in line.split():
            if word.startswith("ino:"):
                yield int(word[4:])
                break


def _inodes_in_proc_net(port: int) -> Iterable[int]:
    suffix = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                if fields[1].endswith(suffix) and fields[3] == _ESTABLISHED_HEX:
                    yield int(fields[9])


def listen_counters() -> dict[str, int]:
    """The kernel's TcpExt ListenOverflows and ListenDrops (system-wide, since boot)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], map(int, values.split()[1:]), strict=False))
            return {k: table.get(k, 0) for k in ("ListenOverflows", "ListenDrops")}
    return {"ListenOverflows": 0, "ListenDrops": 0}


@dataclass
class ProcessFigures:
    pid: int
    rss_kb: int
    pss_kb: int
    open_files: int
    cpu_s: float


def figures(pid: int) -> ProcessFigures:
    return ProcessFigures(pid, rss_kb(pid), pss_kb(pid), open_files(pid), cpu_seconds(pid))
