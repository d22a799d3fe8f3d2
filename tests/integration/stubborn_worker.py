"""``python -m tests.integration.stubborn_worker READY``: a supervisor of one worker whose
drain never ends (it ignores SIGTERM and never returns), for test_supervisor. The worker
writes READY once it is watching its supervisor; the supervisor prints the worker's pid.
Kept apart from the test module so that neither process imports the test suite."""

from __future__ import annotations

import multiprocessing
import signal
import sys
import time
from pathlib import Path

from kalami_gateway.app.workers import exit_with_supervisor


def stubborn_worker(ready: str) -> None:
    exit_with_supervisor()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Path(ready).write_text("ready")
    while True:
        time.sleep(1)


if __name__ == "__main__":
    context = multiprocessing.get_context("spawn")
    worker = context.Process(target=stubborn_worker, args=(sys.argv[1],))
    worker.start()
    print(worker.pid, flush=True)
    time.sleep(120)
