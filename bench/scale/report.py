"""The scale run's report: a Markdown table in the issue's columns, the details under it, the
handshakes by outcome, one row per worker; and the JSON of everything."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from bench.scale.outcomes import Kind, by_kind
from bench.scale.results import ScaleResult


def _n(value: float) -> str:
    return f"{value:,.0f}"


def _mib(kb: float | None) -> str:
    return "—" if kb is None else f"{kb / 1024:,.0f} MiB"


def _ms(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:,.1f} ms"


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:,.1f} s"


def summary_table(result: ScaleResult) -> str:
    hold, memory = result.hold, result.memory
    assert hold is not None
    assert memory is not None
    if result.stats_exact:
        stats = "exact"
    elif result.stats_cluster is None:
        stats = "no answer"
    else:
        stats = f"{result.stats_cluster:,} (not {result.stats_expected:,})"
    pings = hold.pings
    ping_text = (
        f"{pings.mean:.1f}"
        if pings.low == pings.high
        else f"{pings.low}-{pings.high} (mean {pings.mean:.1f})"
    )
    per_ping = (
        "" if math.isnan(hold.cpu_per_ping_us) else f" (≈ {hold.cpu_per_ping_us:,.0f} µs per ping)"
    )
    header = (
        "| workers | held | connect failures | `/stats` cluster count | gateway RSS "
        "| KB per connection | workers' CPU while idle "
        f"| pings per connection in {hold.seconds:.0f} s | probe ping p99 |"
    )
    row = (
        f"| {result.workers} | {_n(hold.held)} | {_n(result.ramp.failures)} | {stats} "
        f"| {_mib(memory.gateway_rss_kb)} | {memory.kb_per_connection:.1f} "
        f"| {hold.workers_cpu_percent:.1f} % of a core{per_ping} | {ping_text} "
        f"| {_ms(hold.probe.p99_ms)} |"
    )
    return "\n".join([header, "|---|---|---|---|---|---|---|---|---|", row])


def outcome_table(result: ScaleResult) -> str:
    ramp = result.ramp
    lines = ["| handshake outcome | count |", "|---|---|"]
    lines += [f"| {key} | {_n(count)} |" for key, count in ramp.outcomes.items()]
    unsettled = ramp.attempted - sum(ramp.outcomes.values())
    if unsettled:
        lines.append(f"| not settled by the ramp's deadline | {_n(unsettled)} |")
    if ramp.planned != ramp.attempted:
        lines.append(f"| not attempted | {_n(ramp.planned - ramp.attempted)} |")
    return "\n".join(lines)


def _dropped(counts: dict[str, int]) -> str:
    return ", ".join(f"{_n(n)} ({why})" for why, n in counts.items()) or "0"


def details_table(result: ScaleResult) -> str:
    ramp, hold, memory, close = result.ramp, result.hold, result.memory, result.close
    assert hold is not None
    assert memory is not None
    kinds = by_kind(ramp.outcomes)
    polls = ramp.stats_polls
    late = hold.lateness
    rows: list[tuple[str, str]] = [
        (
            "ramp",
            f"{_n(ramp.attempted)} connects from {ramp.client_processes} client process(es) in "
            f"{ramp.seconds:.1f} s: {_n(ramp.connects_per_s)} /s; handshake p50 "
            f"{_ms(ramp.handshake_p50_ms)}, p99 {_ms(ramp.handshake_p99_ms)} (worst process)",
        ),
        (
            "refused with Retry-After (503) / other status / silent (reset, closed, timeout)",
            f"{_n(kinds[Kind.RETRY_AFTER])} / {_n(kinds[Kind.STATUS])} / "
            f"{_n(ramp.silent_failures)}"
            + (
                f"; lost after the 101: {_n(kinds[Kind.LOST_AFTER_101])}"
                if kinds[Kind.LOST_AFTER_101]
                else ""
            ),
        ),
        (
            "listen-queue overflows / drops (kernel, over the ramp)",
            f"{_n(ramp.listen_overflows)} / {_n(ramp.listen_drops)}",
        ),
        (
            "`/stats` during the ramp",
            f"answered {polls.answered} of {polls.polls} polls, slowest {polls.slowest_ms:,.0f} ms"
            + (f"; {polls.failures[0]}" if polls.failures else ""),
        ),
        ("`/health`, `/metrics` after the ramp", f"{ramp.health_after}, {ramp.metrics_after}"),
        (
            "`/stats` cluster count after the hold",
            f"{result.stats_cluster} (held {_n(hold.held)} + the probe = "
            f"{_n(result.stats_expected)}), {result.stats_instances} instances",
        ),
        (
            "spread: busiest worker over the mean",
            f"{result.spread_percent:.1f} % ("
            + ", ".join(_n(w.connections) for w in result.per_worker)
            + ")",
        ),
        (
            "gateway RSS: idle → held (supervisor included)",
            f"{_mib(memory.gateway_rss_idle_kb)} → {_mib(memory.gateway_rss_kb)}; PSS "
            f"{_mib(memory.gateway_pss_idle_kb)} → {_mib(memory.gateway_pss_kb)}; "
            f"{memory.kb_per_connection:.1f} KB per "
            f"connection by RSS, {memory.pss_kb_per_connection:.1f} by PSS",
        ),
        (
            "most open files in one worker",
            f"{_n(max(w.open_files for w in result.per_worker))} of "
            f"{_n(min(w.open_file_limit for w in result.per_worker))}",
        ),
        (
            f"protocol pings in the {hold.seconds:.0f} s hold (interval {hold.heartbeat:g} s)",
            f"{_n(hold.ping_total)}; per connection {hold.pings.low}-{hold.pings.high}, mean "
            f"{hold.pings.mean:.2f}",
        ),
        (
            "ping lateness (gap - interval)",
            f"p50 {_ms(late.p50_ms)}, p99 {_ms(late.p99_ms)}, max {_ms(late.max_ms)}; "
            f"{_n(late.late)} of {_n(late.gaps)} gaps later than the tolerance; "
            f"{_n(hold.overdue)} sockets overdue at the end (longest silence "
            f"{hold.longest_silence_s:.1f} s)",
        ),
        (
            "welcomed, then dropped by the gateway: during the ramp / the hold",
            f"{_dropped(ramp.dropped)} / {_dropped(hold.dropped)}",
        ),
        (
            "probe (application ping → pong)",
            f"{hold.probe.answered} of {hold.probe.sent}: p50 {_ms(hold.probe.p50_ms)}, "
            f"p99 {_ms(hold.probe.p99_ms)}, max {_ms(hold.probe.max_ms)}"
            + (f"; {hold.probe.error}" if hold.probe.error else ""),
        ),
        (
            "client processes' RSS",
            f"{_mib(memory.clients_rss_kb)}: {memory.clients_kb_per_connection:.1f} KB per "
            "connection",
        ),
    ]
    if close is not None:
        rows += [
            (
                "clean close (client close frames)",
                f"{_n(close.clean)} of {_n(close.sent)} answered in {close.seconds:.1f} s"
                + (f"; {_n(close.other)} without the server's close frame" if close.other else "")
                + (f"; {_n(close.unfinished)} unfinished" if close.unfinished else "")
                + (
                    f"; {_n(close.dropped_before)} had been dropped by the gateway before"
                    if close.dropped_before
                    else ""
                ),
            ),
            (
                "`/stats` back to 0",
                _seconds(close.stats_zero_after_s)
                + ("" if close.stats_left in (0, None) else f" ({close.stats_left} left)"),
            ),
            (
                "gateway RSS after the close",
                _mib(memory.gateway_rss_after_close_kb)
                + " ("
                + ", ".join(_mib(w.rss_after_close_kb) for w in result.per_worker)
                + ")",
            ),
        ]
    if result.stop is not None:
        code = "unknown (not our child)" if result.stop.exit_code is None else result.stop.exit_code
        rows.append(("SIGTERM → exit", f"exit {code} in {result.stop.seconds:.2f} s"))
    if result.redis_keys_left:
        left = result.redis_keys_left
        rows.append(
            (
                "Redis keys the stopped gateway left (deleted)",
                f"{len(left)}: " + ", ".join(f"`{k}`" for k in left[:4]),
            )
        )
    lines = ["| figure | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


def worker_table(result: ScaleResult) -> str:
    lines = [
        "| worker pid | connections | RSS idle | RSS held | PSS held | open files "
        "| CPU while idle | RSS after close |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {w.pid} | {_n(w.connections)} | {_mib(w.rss_idle_kb)} | {_mib(w.rss_kb)} "
        f"| {_mib(w.pss_kb)} | {_n(w.open_files)} | {w.idle_cpu_percent:.1f} % "
        f"| {_mib(w.rss_after_close_kb)} |"
        for w in result.per_worker
    ]
    return "\n".join(lines)


def limit_verdicts(result: ScaleResult) -> str:
    """For a too-few-workers run: how the connections past the ceiling were refused."""
    ramp = result.ramp
    kinds = by_kind(ramp.outcomes)
    polls = ramp.stats_polls
    refused = kinds[Kind.RETRY_AFTER]
    lines = [
        f"- welcomed (101): {_n(kinds[Kind.OK])}",
        f"- refused with an HTTP status and Retry-After: {_n(refused)}"
        + "".join(
            f" ({k}: {_n(n)})" for k, n in ramp.outcomes.items() if k.startswith("retry_after")
        ),
        f"- other HTTP status: {_n(kinds[Kind.STATUS])}",
        f"- reset / closed before a response / timed out / TCP refused: "
        f"{_n(kinds[Kind.RESET])} / {_n(kinds[Kind.CLOSED])} / {_n(kinds[Kind.TIMEOUT])} / "
        f"{_n(kinds[Kind.CONNECT_ERROR])}",
        f"- `/stats` answered during the overload: {polls.answered} of {polls.polls} polls",
        f"- every connection past the ceiling refused cleanly: "
        f"{'yes' if ramp.failures == refused else 'NO'}",
        f"- counted in /metrics (read after the ramp): {_metric_refusals(result)}",
        "- said in the gateway's log: "
        + (", ".join(f"{e} x{n}" for e, n in result.log_events.items()) or "nothing"),
    ]
    return "\n".join(lines)


def _metric_refusals(result: ScaleResult) -> str:
    """The refusals the gateway's own metrics counted (``*_refused_total`` families)."""
    found = [line for line in result.metrics_lines if line.split("{")[0].endswith("refused_total")]
    if not found:
        return "no refusal counter"
    total = sum(float(line.rsplit(" ", 1)[1]) for line in found)
    return f"{total:,.0f} ({'; '.join(found)})"


def markdown(result: ScaleResult) -> str:
    parts: list[str] = []
    if result.hold is not None and result.memory is not None:
        parts += [summary_table(result), "", details_table(result), ""]
    parts.append(outcome_table(result))
    if result.per_worker:
        parts += ["", worker_table(result)]
    if result.options.get("limit") == "True":
        parts += ["", limit_verdicts(result)]
    if result.log_events:
        parts += [
            "",
            "Gateway log: " + ", ".join(f"{e} x{n}" for e, n in result.log_events.items()),
        ]
    if result.notes:
        parts += ["", *(f"Note: {note}" for note in result.notes)]
    return "\n".join(parts)


def write_json(result: ScaleResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dataclasses.asdict(result), indent=2, default=str) + "\n")
