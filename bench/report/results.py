"""The JSON a run leaves behind: the sizes, every row with its nginx ratio, the empty apps'
rows, and the engines table (each line with its ratios, its target and whether the native
engine met it); by default under ``bench/results/`` (git ignores it), named by the time."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from bench.report.engines import EngineLine
from bench.report.row import Row
from bench.sizes import Sizes
from bench.targets import BENCH_DIR


def default_path(smoke: bool) -> Path:
    return (
        BENCH_DIR
        / "results"
        / f"bench-{'smoke-' if smoke else ''}{time.strftime('%Y%m%d-%H%M%S')}.json"
    )


def write_results(
    out: Path,
    sizes: Sizes,
    rows: list[Row],
    floors: dict[str, list[Row]],
    *,
    engines: list[EngineLine],
    default_engine: str,
    judged: bool,
) -> None:
    """``default_engine``: the one the main table's gateway ran; ``judged``: False in a smoke
    run, whose engine lines then say ``"met": null``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "sizes": asdict(sizes),
                "rows": [{**asdict(r), "ratio": r.ratio} for r in rows],
                "floors": {kind: [asdict(r) for r in found] for kind, found in floors.items()},
                "engines": {
                    "default": default_engine,
                    "lines": [
                        {
                            **asdict(line),
                            "native_ratio": line.native_ratio,
                            "uvicorn_ratio": line.uvicorn_ratio,
                            "target": line.target,
                            "met": line.met(judged),
                        }
                        for line in engines
                    ],
                },
            },
            indent=2,
        )
    )
