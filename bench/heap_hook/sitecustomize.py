"""Loaded by a server process that ``bench.heap`` starts (this folder is put on its
PYTHONPATH): SIGUSR1 starts tracing Python allocations, SIGUSR2 collects garbage and writes
a snapshot to the file named by KALAMI_HEAP_SNAPSHOT."""

import gc
import os
import signal
import tracemalloc

_target = os.environ.get("KALAMI_HEAP_SNAPSHOT", "")

if _target:

    def _start(*_: object) -> None:
        tracemalloc.start(25)

    def _dump(*_: object) -> None:
        gc.collect()  # what is alive, not what the collector has yet to reach
        tracemalloc.take_snapshot().dump(_target + ".tmp")
        os.replace(_target + ".tmp", _target)

    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _dump)
