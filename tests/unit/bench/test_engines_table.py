"""The engines table (issue 27): the gateway's WebSocket figures on both engines beside the
Node stack's, and the native engine judged against ``ENGINE_TARGETS`` — at least and at most
a multiple of Node, the streamed audio against Node's ingest, the absolute memory bar — with
no verdict where Node was not measured or nothing is judged (smoke)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench.report import ENGINE_TARGETS, EngineLine, Row, engine_lines, engines_table
from bench.report.engines import SOCKET_KEYS, memory_keys
from bench.report.results import write_results
from bench.sizes import FULL, SMOKE
from bench.targets import default_ws_engine

from kalami_gateway.app.settings import load_settings

STEPS = FULL.idle_steps  # (2000, 10000)


def figures(unit: str = "", **values: float) -> list[Row]:
    """Rows as a case returns them: the figure is named after its key."""
    return [Row(f"the {key}", key, value, unit=unit) for key, value in values.items()]


def one_line(native: list[Row], node: list[Row], uvicorn: list[Row] | None = None) -> EngineLine:
    lines = engine_lines({"native": native, "uvicorn": uvicorn or []}, node, STEPS)
    assert len(lines) == 1
    return lines[0]


def test_an_at_least_target_is_met_at_its_bar_and_missed_below_it() -> None:
    node = figures(ping_round_trips_per_s=50_000)
    at_bar = one_line(figures(ping_round_trips_per_s=60_000), node)
    below = one_line(figures(ping_round_trips_per_s=59_000), node)

    assert at_bar.native_ratio == pytest.approx(1.2)
    assert at_bar.met() is True
    assert at_bar.verdict() == ">= 1.2x Node: yes"
    assert below.met() is False
    assert below.verdict() == ">= 1.2x Node: NO"


def test_connects_need_one_and_a_half_times_node() -> None:
    node = figures(ws_connects_per_s=2_000)
    assert one_line(figures(ws_connects_per_s=3_000), node).verdict() == ">= 1.5x Node: yes"
    assert one_line(figures(ws_connects_per_s=2_900), node).verdict() == ">= 1.5x Node: NO"


def test_an_at_most_target_is_met_at_its_bar_and_missed_above_it() -> None:
    node = figures(ping_p99_ms=4.0)
    as_good = one_line(figures(ping_p99_ms=4.0), node)
    worse = one_line(figures(ping_p99_ms=4.2), node)

    assert as_good.verdict() == "<= 1x Node: yes"
    assert worse.met() is False
    assert worse.verdict() == "<= 1x Node: NO"


def test_the_memory_bar_is_absolute_and_needs_no_node_figure() -> None:
    within = one_line(figures("KB", idle_kb_10000=10.0), [])
    over = one_line(figures("KB", idle_kb_10000=10.5), figures("KB", idle_kb_10000=8.0))

    assert within.verdict() == "<= 10 KB: yes"
    assert over.met() is False
    assert over.verdict() == "<= 10 KB: NO"
    assert over.native_ratio == pytest.approx(10.5 / 8.0)  # shown, but not what is judged


def test_audio_streamed_is_judged_against_nodes_ingest() -> None:
    # Node streams nothing: were a streamed figure of its there, it would not be the bar.
    node = figures(audio_ingest_mb_per_s=100, audio_stream_mb_per_s=1_000)
    met = one_line(figures(audio_stream_mb_per_s=110), node)
    missed = one_line(figures(audio_stream_mb_per_s=105), node)

    assert met.node_key == "audio_ingest_mb_per_s"
    assert met.node == 100
    assert "audio_ingest_mb_per_s" in met.figure  # the table says what Node's column holds
    assert met.verdict() == ">= 1.1x Node: yes"
    assert missed.verdict() == ">= 1.1x Node: NO"


def test_the_streamed_cpu_is_set_beside_nodes_ingest_unjudged() -> None:
    node = figures(audio_ingest_cpu_us=40)
    line = one_line(figures(audio_stream_cpu_us=50), node)

    assert line.node == 40
    assert line.native_ratio == pytest.approx(1.25)
    assert line.met() is None
    assert line.verdict() == ""


def test_without_node_a_ratio_target_gets_no_verdict() -> None:
    line = one_line(figures(ping_round_trips_per_s=60_000), [])

    assert line.node is None
    assert line.native_ratio is None
    assert line.met() is None
    assert line.verdict() == ">= 1.2x Node: not judged (no Node figure)"
    assert "| — | — | — | >= 1.2x Node: not judged (no Node figure) |" in engines_table([line])


def test_a_smoke_run_judges_nothing() -> None:
    native = figures(ping_round_trips_per_s=10, ping_p99_ms=100)
    native += figures("KB", idle_kb_10000=100)
    node = figures(ping_round_trips_per_s=50_000, ping_p99_ms=1)
    lines = engine_lines({"native": native}, node, STEPS)

    assert [line.met(judged=False) for line in lines] == [None, None, None]
    assert [line.verdict(judged=False) for line in lines] == [
        ">= 1.2x Node (smoke: not judged)",
        "<= 1x Node (smoke: not judged)",
        "<= 10 KB (smoke: not judged)",
    ]
    assert "yes" not in engines_table(lines, judged=False)
    assert "NO" not in engines_table(lines, judged=False)


def test_only_the_native_engine_is_judged() -> None:
    line = one_line(
        figures("/s", ping_round_trips_per_s=60_000),
        figures("/s", ping_round_trips_per_s=50_000),
        uvicorn=figures("/s", ping_round_trips_per_s=30_000),
    )

    assert line.uvicorn_ratio == pytest.approx(0.6)  # below the bar, and no NO for it
    assert line.verdict() == ">= 1.2x Node: yes"
    assert engines_table([line]).splitlines() == [
        "| figure | native | uvicorn | Node | native/Node | uvicorn/Node "
        "| target for the default (native) |",
        "|---|---|---|---|---|---|---|",
        "| the ping_round_trips_per_s | 60,000.0 /s | 30,000.0 /s | 50,000.0 /s "
        "| 1.20 | 0.60 | >= 1.2x Node: yes |",
    ]


def test_lines_follow_the_tables_order_with_either_engine_missing() -> None:
    native = figures("KB", idle_kb_per_connection=9, idle_kb_10000=8)
    native += figures(ping_p99_ms=2, ws_connects_per_s=3_000)
    uvicorn = figures(ping_p99_ms=3, audio_ingest_mb_per_s=70)
    lines = engine_lines({"native": native, "uvicorn": uvicorn}, [], STEPS)

    assert [line.key for line in lines] == [
        "ws_connects_per_s",
        "ping_p99_ms",
        "audio_ingest_mb_per_s",
        "idle_kb_per_connection",
        "idle_kb_10000",
    ]
    ingest = lines[2]
    assert (ingest.native, ingest.uvicorn) == (None, 70)
    assert ingest.verdict() == ""  # ingest alone is not a target: streaming is
    assert lines[0].uvicorn is None


def test_the_smoke_runs_memory_steps_are_shown_and_not_judged() -> None:
    native = figures("KB", idle_kb_per_connection=30, idle_kb_40=31)
    lines = engine_lines({"native": native}, [], SMOKE.idle_steps)

    assert [line.key for line in lines] == ["idle_kb_per_connection", "idle_kb_40"]
    assert [line.verdict() for line in lines] == ["", ""]


def test_every_target_has_a_line_at_full_size() -> None:
    keys = (*SOCKET_KEYS, *memory_keys(FULL.idle_steps))
    assert set(ENGINE_TARGETS) <= set(keys)


def test_the_json_carries_the_engines_table(tmp_path: Path) -> None:
    native = figures(ping_round_trips_per_s=60_000)
    lines = engine_lines(
        {"native": native, "uvicorn": figures(ping_round_trips_per_s=30_000)},
        figures(ping_round_trips_per_s=50_000),
        STEPS,
    )
    out = tmp_path / "results.json"

    write_results(out, SMOKE, native, {}, engines=lines, default_engine="uvicorn", judged=True)

    engines = json.loads(out.read_text())["engines"]
    assert engines["default"] == "uvicorn"
    assert engines["lines"] == [
        {
            "figure": "the ping_round_trips_per_s",
            "key": "ping_round_trips_per_s",
            "unit": "",
            "native": 60_000,
            "uvicorn": 30_000,
            "node": 50_000,
            "node_key": "ping_round_trips_per_s",
            "native_ratio": 1.2,
            "uvicorn_ratio": 0.6,
            "target": ">= 1.2x Node",
            "met": True,
        }
    ]


def test_the_json_of_a_smoke_run_says_nothing_was_met(tmp_path: Path) -> None:
    lines = engine_lines({"native": figures(ws_connects_per_s=1)}, [], STEPS)
    out = tmp_path / "results.json"

    write_results(out, SMOKE, [], {}, engines=lines, default_engine="native", judged=False)

    assert json.loads(out.read_text())["engines"]["lines"][0]["met"] is None


def test_the_default_engine_is_the_one_the_gateway_runs_unless_told() -> None:
    settings = load_settings({"JWT_SECRET": "s" * 40}, env_file=None)
    assert default_ws_engine() == settings.ws_engine
