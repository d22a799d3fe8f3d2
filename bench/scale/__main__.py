"""``python -m bench.scale``: N idle WebSockets on ``kalami-gateway serve --workers W``, held,
measured, closed; a Markdown table on stdout, everything as JSON (``--out``)."""

from __future__ import annotations

import resource
import sys

from bench.scale.options import parse
from bench.scale.report import markdown, write_json
from bench.scale.run import Unfit, _default_path, measure


def main(argv: list[str] | None = None) -> int:
    options = parse(argv)
    # The gateway started here and the client processes inherit this: every process may hold
    # as many files as the hard limit allows (20,000 here), no more.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        result = measure(options)
    except Unfit as unfit:
        print(f"bench.scale: this machine cannot run it as it is:\n{unfit}", file=sys.stderr)
        return 2
    print(markdown(result))
    out = options.out or _default_path(options, ".json")
    write_json(result, out)
    print(f"\nJSON: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
