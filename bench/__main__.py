"""``make bench``: the gateway against an nginx baseline and the Node stack, one run.

Starts nginx (a fast backend stand-in plus an nginx /api proxy as the baseline) and the
gateways (``BACKEND_MODE=http`` against nginx, ``BACKEND_MODE=stub`` for voice turns, one
per WebSocket engine for the socket cases), all on 127.0.0.1, measures, prints three markdown
tables (every figure; the empty apps' floor; the WebSocket engines against the targets for
making WS_ENGINE=native the default), writes JSON, and stops everything by pid. Every load
loop is bounded in count and in time.
"""

from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path

from bench.report import default_path, engines_table, floor_table, table, write_results
from bench.run import measure
from bench.sizes import FULL, SMOKE
from bench.targets import ensure_tools


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__)
    parser.add_argument(
        "--smoke", action="store_true", help="tiny counts: checks the harness works"
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON results file")
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ensure_tools()
    run = measure(sizes)
    judged = not args.smoke
    print(f"Gateway: WS_ENGINE={run.default_engine} (the settings' default).\n")
    print(table(run.rows, judged=judged))
    print()
    print(floor_table(run.rows, run.floors))
    print()
    print("WebSocket engines (the targets for making WS_ENGINE=native the default):\n")
    print(engines_table(run.engines, judged=judged))
    out = args.out or default_path(args.smoke)
    write_results(
        out,
        sizes,
        run.rows,
        run.floors,
        engines=run.engines,
        default_engine=run.default_engine,
        judged=judged,
    )
    print(f"\nJSON: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
