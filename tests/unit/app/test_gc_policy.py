"""The collector policy of a process the gateway owns, applied and undone in this process."""

from __future__ import annotations

import gc

from kalami_gateway.app.server import GC_THRESHOLDS, collect_less


def test_what_is_alive_is_frozen_and_young_collections_are_rarer() -> None:
    before = gc.get_threshold()
    try:
        collect_less()
        assert gc.get_freeze_count() > 1000  # the interpreter, pytest and the gateway's modules
        assert gc.get_threshold() == GC_THRESHOLDS
        # Cycles made afterwards are still collected.
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
