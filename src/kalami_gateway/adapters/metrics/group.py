"""The supervisor's side of the workers' shared metrics (``shared.py``): a private directory.

Made before the first worker is spawned and named in the environment the workers inherit, so
each worker's interpreter starts with ``PROMETHEUS_MULTIPROC_DIR`` set and prometheus-client
keeps its values there from its first import (whatever the supervisor's own environment said:
a directory left by an earlier run would add its counts to this one's). The supervisor keeps
the list of its live workers' pids in it (whose process figures a scrape reads), tells it of
each worker that dies, and removes it when it stops. A fresh directory per start: the group's
counters start from zero, as one process's do when it restarts (Prometheus reads a counter
reset). A supervisor killed outright (SIGKILL) leaves it behind: a few sparse files under
``$TMPDIR``, named ``kalami-metrics-*``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator

from prometheus_client.multiprocess import mark_process_dead

from kalami_gateway.adapters.metrics.shared import MULTIPROCESS_ENV, WORKERS_FILE


class SharedMetricsDir:
    def __init__(self, path: str) -> None:
        self.path = path

    def workers_are(self, pids: Iterable[int]) -> None:
        """The live workers, replaced at once (a scrape reads the old list or the new)."""
        listing = os.path.join(self.path, WORKERS_FILE)
        with open(f"{listing}.new", "w", encoding="ascii") as new:
            new.writelines(f"{pid}\n" for pid in sorted(pids))
        os.replace(f"{listing}.new", listing)

    def worker_gone(self, slot: int) -> None:
        """The worker in ``slot`` has exited: its connections leave the group's gauges; its
        counters and histograms stay in the slot's files, for its replacement to go on from."""
        mark_process_dead(slot, self.path)  # type: ignore[no-untyped-call]  # unannotated upstream


@contextlib.contextmanager
def shared_metrics_dir() -> Iterator[SharedMetricsDir]:
    """A new directory (mode 0700), in ``PROMETHEUS_MULTIPROC_DIR`` for the workers spawned
    meanwhile; afterwards removed, and the variable as it was."""
    path = tempfile.mkdtemp(prefix="kalami-metrics-")
    previous = os.environ.get(MULTIPROCESS_ENV)
    os.environ[MULTIPROCESS_ENV] = path
    try:
        yield SharedMetricsDir(path)
    finally:
        if previous is None:
            os.environ.pop(MULTIPROCESS_ENV, None)
        else:
            os.environ[MULTIPROCESS_ENV] = previous
        shutil.rmtree(path, ignore_errors=True)
