"""The JSON a run leaves behind: the sizes, every row with its nginx ratio, and the empty
apps' rows; by default under ``bench/results/`` (git ignores it), named by the time."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from bench.report.row import Row
from bench.sizes import Sizes
from bench.targets import BENCH_DIR


def default_path(smoke: bool) -> Path:
    return (
        BENCH_DIR
        / "results"
        / f"bench-{'smoke-' if smoke else ''}{time.strftime('%Y%m%d-%H%M%S')}.json"
    )


def write_results(out: Path, sizes: Sizes, rows: list[Row], floors: dict[str, list[Row]]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "sizes": asdict(sizes),
                "rows": [{**asdict(r), "ratio": r.ratio} for r in rows],
                "floors": {kind: [asdict(r) for r in found] for kind, found in floors.items()},
            },
            indent=2,
        )
    )
