"""The order of one scale run: check the machine, start (or attach to) the gateway, open the
probe, ramp the client processes, hold, measure, close, stop — every process this run started
stopped by pid whatever happens."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from bench.scale import procfs
from bench.scale.clients import (
    CLOSE_TIMEOUT_S,
    ClientPlan,
    ClientProcess,
    CloseReport,
    HoldReport,
    RampReport,
)
from bench.scale.figures import lateness, merge_spreads, shares, spread_percent
from bench.scale.gateway import REDIS_URL, ScaleGateway, get_text
from bench.scale.options import Options
from bench.scale.outcomes import failures, silent_failures
from bench.scale.probe import Probe, StatsPoller
from bench.scale.results import Close, Hold, Memory, Ramp, ScaleResult, WorkerFigures
from bench.scale.system import Need, can_bind, problems, running_as_root
from bench.targets.local import SECRET, free_port
from kalami_gateway.adapters.jwt_decoder import mint_token

# /metrics lines kept in the results: the connection figures and whatever the ceiling, its
# refusals and failed accepts come to be called.
_METRICS_OF_INTEREST = re.compile(
    r"^(?!#).*(connection|refus|ceiling|open_files|fds|emfile|accept|limit|503)", re.IGNORECASE
)
_SOURCE_NET = "127.0.2."  # client process k binds 127.0.2.(k+1): its own ephemeral ports
_UPGRADE_KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # any 16 bytes in base64 do


class Unfit(Exception):
    """The machine cannot run this: the message says what to fix."""


def measure(options: Options) -> ScaleResult:
    processes = max(1, math.ceil(options.connections / options.per_process))
    need = Need(options.connections, options.per_process, options.workers, not options.attached)
    found = problems(need)
    sources = [f"{_SOURCE_NET}{k + 1}" for k in range(processes)]
    if not all(can_bind(s) for s in sources):
        found.append(f"cannot bind the loopback source addresses {sources[0]}…: is lo up?")
    if found:
        raise Unfit("\n".join(f"- {p}" for p in found))
    with contextlib.ExitStack() as stack:
        gateway = _gateway(options)
        stack.callback(_stop_if_left, gateway, options)
        return _run(options, gateway, sources, stack)


def _gateway(options: Options) -> ScaleGateway:
    if options.port is not None and options.pid is not None:
        return ScaleGateway.attach(options.port, options.pid)
    log = options.log or _default_path(options, ".log")
    return ScaleGateway.start(
        free_port(), options.workers, options.heartbeat, log, options.gateway_env
    )


def _stop_if_left(gateway: ScaleGateway, options: Options) -> None:
    if gateway.process is not None and gateway.process.poll() is None:
        gateway.stop(30)


def _default_path(options: Options, suffix: str) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"scale-w{options.workers}-n{options.connections}-{stamp}{suffix}"
    return Path(__file__).resolve().parent.parent / "results" / name


def _requests(options: Options, port: int) -> tuple[bytes, ...]:
    secret = options.jwt_secret or SECRET
    expires = time.time() + 6 * 3600
    return tuple(
        (
            f"GET /ws?token={mint_token(secret, f'scale-{n}', expires)} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {_UPGRADE_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        for n in range(options.users)
    )


def _run(
    options: Options, gateway: ScaleGateway, sources: list[str], stack: contextlib.ExitStack
) -> ScaleResult:
    requests = _requests(options, gateway.port)
    workers = gateway.worker_pids()
    idle = {pid: procfs.figures(pid) for pid in workers}
    supervisor_idle = procfs.figures(gateway.supervisor_pid) if gateway.workers > 1 else None
    probe = Probe(gateway.port, requests[0])
    stack.callback(probe.close)
    counts = shares(options.connections, len(sources))
    rate_each = options.rate / len(sources)
    deadline = options.connections / options.rate * options.ramp_budget + options.hold + 300
    clients = [
        ClientProcess(
            ClientPlan(
                index=k,
                source=source,
                host="127.0.0.1",
                port=gateway.port,
                count=count,
                rate=rate_each,
                in_flight=options.in_flight,
                ramp_budget=options.ramp_budget,
                handshake_timeout=options.handshake_timeout,
                requests=requests,
                heartbeat=options.heartbeat,
                tolerance=options.ping_tolerance,
                deadline=deadline,
            )
        )
        for k, (source, count) in enumerate(zip(sources, counts, strict=True))
    ]
    for client in clients:
        stack.callback(client.stop)
        client.start()
    for client in clients:
        client.receive(60)  # ("ready", rss)

    say(f"ramp: {options.connections:,} connects at {options.rate:,.0f}/s, {len(sources)} clients")
    ramp = _ramp(options, gateway, clients, len(sources))
    say(
        f"ramp: {ramp.summary.held:,} held, {ramp.summary.failures:,} failed, "
        f"in {ramp.summary.seconds:.1f} s"
    )
    result = ScaleResult(
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        options={k: str(v) for k, v in dataclasses.asdict(options).items()},
        workers=len(workers),
        ramp=ramp.summary,
        as_root=running_as_root(),
    )
    # A phase that fails is noted in the report; the run goes on to close and stop.
    try:
        result.metrics_lines = _metrics_lines(gateway)
        say(f"hold: {options.hold:.0f} s")
        result.hold, hold_reports, cpu = _hold(options, gateway, clients, workers, probe)
        say("measuring the held connections")
        _measure_held(result, gateway, idle, supervisor_idle, cpu, ramp.reports, hold_reports)
    except Exception as exc:  # reported, and the run still closes and stops
        result.notes.append(f"hold or measurement failed: {type(exc).__name__}: {exc}")
    try:
        say("closing")
        result.close = _close(gateway, clients, probe)
        time.sleep(2.0)  # what the allocator gives back, it gives back within this
        _after_close(result, gateway, workers)
    except Exception as exc:  # reported, and the run still stops the gateway
        result.notes.append(f"close failed: {type(exc).__name__}: {exc}")
    if gateway.process is not None or options.terminate:
        say("SIGTERM to the gateway")
        result.stop = gateway.stop()
    if gateway.log_path is not None and gateway.process is not None:
        result.log_events = _log_events(gateway.log_path)
        result.redis_keys_left = _redis_keys_left(gateway)
    return result


def say(line: str) -> None:
    """A progress line on stderr (the report goes to stdout)."""
    print(f"{time.strftime('%H:%M:%S')} bench.scale: {line}", file=sys.stderr, flush=True)


def _after_close(result: ScaleResult, gateway: ScaleGateway, workers: list[int]) -> None:
    after = {pid: procfs.rss_kb(pid) for pid in workers if Path(f"/proc/{pid}").exists()}
    for figures in result.per_worker:
        figures.rss_after_close_kb = after.get(figures.pid)
    if result.memory is not None:
        result.memory.gateway_rss_after_close_kb = sum(after.values()) + (
            procfs.rss_kb(gateway.supervisor_pid) if gateway.workers > 1 else 0
        )


@dataclasses.dataclass
class _RampRun:
    summary: Ramp
    reports: list[RampReport]


def _ramp(
    options: Options, gateway: ScaleGateway, clients: list[ClientProcess], processes: int
) -> _RampRun:
    listen_before = procfs.listen_counters()
    start_at = time.time() + 1.0
    budget = options.connections / options.rate * 3 + options.handshake_timeout * 2 + 90
    with StatsPoller(f"{gateway.http}/stats", interval=0.5) as poller:
        for client in clients:
            client.send("ramp", start_at)
        reports: list[RampReport] = [client.receive(budget) for client in clients]
    listen_after = procfs.listen_counters()
    outcomes: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    for report in reports:
        outcomes.update(report.outcomes)
        dropped.update(report.dropped)
    seconds = max(r.seconds for r in reports)
    attempted = sum(r.attempted for r in reports)
    summary = Ramp(
        planned=options.connections,
        attempted=attempted,
        client_processes=processes,
        outcomes=dict(sorted(outcomes.items())),
        failures=failures(outcomes),
        silent_failures=silent_failures(outcomes),
        held=sum(r.held for r in reports),
        dropped=dict(dropped),
        seconds=seconds,
        connects_per_s=attempted / seconds if seconds else math.nan,
        handshake_p50_ms=statistics.median(r.handshake_p50_ms for r in reports),
        handshake_p99_ms=max(r.handshake_p99_ms for r in reports),
        listen_overflows=listen_after["ListenOverflows"] - listen_before["ListenOverflows"],
        listen_drops=listen_after["ListenDrops"] - listen_before["ListenDrops"],
        stats_polls=poller.polls,
        health_after=_answer(f"{gateway.http}/health"),
        metrics_after=_answer(f"{gateway.http}/metrics"),
    )
    return _RampRun(summary, reports)


def _answer(url: str) -> str:
    try:
        get_text(url, 5)
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    return "answered"


def _hold(
    options: Options,
    gateway: ScaleGateway,
    clients: list[ClientProcess],
    workers: list[int],
    probe: Probe,
) -> tuple[Hold, list[HoldReport], dict[int, float]]:
    cpu_before = {pid: procfs.cpu_seconds(pid) for pid in workers}
    began = time.monotonic()
    for client in clients:
        client.send("hold")
    for client in clients:
        client.receive(30)  # ("holding",)
    probe.measure(options.probe_rate, options.hold)
    time.sleep(max(0.0, began + options.hold - time.monotonic()))
    seconds = time.monotonic() - began
    cpu = {pid: procfs.cpu_seconds(pid) - cpu_before[pid] for pid in workers}
    for client in clients:
        client.send("report")
    reports: list[HoldReport] = [client.receive(60) for client in clients]
    gaps = [gap for r in reports for gap in r.gaps]
    ping_total = sum(r.ping_total for r in reports)
    dropped: Counter[str] = Counter()
    for r in reports:
        dropped.update(r.dropped)
    busy = sum(cpu.values())
    hold = Hold(
        seconds=seconds,
        heartbeat=options.heartbeat,
        held=sum(r.held for r in reports),
        dropped=dict(dropped),
        pings=merge_spreads([(r.pings, r.held) for r in reports]),
        ping_total=ping_total,
        lateness=lateness(gaps, options.heartbeat, options.ping_tolerance),
        overdue=sum(r.overdue for r in reports),
        longest_silence_s=max(r.longest_silence for r in reports),
        workers_cpu_percent=busy / seconds * 100,
        cpu_per_ping_us=busy / ping_total * 1e6 if ping_total else math.nan,
        probe=probe.result(15),
    )
    return hold, reports, cpu


def _measure_held(
    result: ScaleResult,
    gateway: ScaleGateway,
    idle: dict[int, procfs.ProcessFigures],
    supervisor_idle: procfs.ProcessFigures | None,
    cpu: dict[int, float],
    ramp_reports: list[RampReport],
    hold_reports: list[HoldReport],
) -> None:
    assert result.hold is not None
    hold = result.hold
    expected = hold.held + (1 if not hold.probe.error else 0)
    result.stats_expected = expected
    for _ in range(10):  # the Redis directory writes in batches: give it a few seconds
        try:
            stats = gateway.stats()
        except OSError as exc:
            result.notes.append(f"/stats after the hold: {type(exc).__name__}: {exc}")
            break
        result.stats_cluster = stats["cluster"]["connections"]
        result.stats_instances = stats["cluster"]["instances"]
        if result.stats_cluster == expected:
            result.stats_exact = True
            break
        time.sleep(0.5)
    established = procfs.established_inodes(gateway.port)
    for pid in idle:
        figures = procfs.figures(pid)
        result.per_worker.append(
            WorkerFigures(
                pid=pid,
                connections=len(procfs.socket_inodes(pid) & established),
                rss_kb=figures.rss_kb,
                pss_kb=figures.pss_kb,
                open_files=figures.open_files,
                open_file_limit=procfs.open_file_limit(pid),
                idle_cpu_percent=cpu[pid] / hold.seconds * 100,
                rss_idle_kb=idle[pid].rss_kb,
            )
        )
    result.spread_percent = spread_percent([w.connections for w in result.per_worker])
    supervisor = gateway.workers > 1
    supervisor_rss = procfs.rss_kb(gateway.supervisor_pid) if supervisor else 0
    supervisor_pss = procfs.pss_kb(gateway.supervisor_pid) if supervisor else 0
    rss = sum(w.rss_kb for w in result.per_worker) + supervisor_rss
    pss = sum(w.pss_kb for w in result.per_worker) + supervisor_pss
    rss_idle = sum(f.rss_kb for f in idle.values())
    pss_idle = sum(f.pss_kb for f in idle.values())
    if supervisor_idle is not None:
        rss_idle += supervisor_idle.rss_kb
        pss_idle += supervisor_idle.pss_kb
    held = max(1, expected)
    clients_rss = sum(r.rss_kb for r in hold_reports)
    clients_base = sum(r.rss_before_kb for r in ramp_reports)
    result.memory = Memory(
        gateway_rss_idle_kb=rss_idle,
        gateway_rss_kb=rss,
        gateway_pss_kb=pss,
        kb_per_connection=(rss - rss_idle) / held,
        gateway_pss_idle_kb=pss_idle,
        pss_kb_per_connection=(pss - pss_idle) / held,
        supervisor_rss_kb=supervisor_rss,
        clients_rss_kb=clients_rss,
        clients_kb_per_connection=(clients_rss - clients_base) / held,
    )


def _close(gateway: ScaleGateway, clients: list[ClientProcess], probe: Probe) -> Close:
    began = time.monotonic()
    for client in clients:
        client.send("close")
    reports: list[CloseReport] = [client.receive(CLOSE_TIMEOUT_S + 30) for client in clients]
    seconds = time.monotonic() - began
    probe.close()
    zero_after: float | None = None
    left: int | None = None
    for _ in range(600):  # at most a minute
        with contextlib.suppress(OSError):
            left = gateway.stats()["cluster"]["connections"]
            if left == 0:
                zero_after = time.monotonic() - began
                break
        time.sleep(0.1)
    return Close(
        sent=sum(r.sent for r in reports),
        clean=sum(r.clean for r in reports),
        other=sum(r.other for r in reports),
        unfinished=sum(r.unfinished for r in reports),
        dropped_before=sum(sum(r.dropped.values()) for r in reports),
        seconds=seconds,
        stats_zero_after_s=zero_after,
        stats_left=left,
    )


def _metrics_lines(gateway: ScaleGateway) -> list[str]:
    try:
        text = get_text(f"{gateway.http}/metrics", 10)
    except OSError:
        return []
    return [line for line in text.splitlines() if _METRICS_OF_INTEREST.search(line)][:60]


def _log_events(path: Path) -> dict[str, int]:
    """The gateway's log lines by event (level and event name), from its JSON lines."""
    events: Counter[str] = Counter()
    for line in _lines(path):
        try:
            entry = json.loads(line)
        except ValueError:
            events["(not JSON) " + line[:60]] += 1
            continue
        if isinstance(entry, dict):
            events[f"{entry.get('level', '?')} {entry.get('event', '?')}"] += 1
    return dict(events.most_common())


def _lines(path: Path) -> Iterator[str]:
    with path.open(errors="replace") as log:
        for line in log:
            if line.strip():
                yield line


def _redis_keys_left(gateway: ScaleGateway) -> list[str] | None:
    """Keys the stopped gateway left under its prefix (deleted here, so runs do not pile up;
    they would expire by themselves)."""
    import redis  # the gateway's own dependency

    try:
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{gateway.key_prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
    except redis.RedisError:
        return None
    return sorted(k.decode(errors="replace") for k in keys)
