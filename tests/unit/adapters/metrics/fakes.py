"""Workers of one group, in this process: each one's prometheus-client values live in the files
of its slot, as a spawned worker's do (``use_worker_slot``: ``values.MultiProcessValue``, the
class prometheus-client picks when ``PROMETHEUS_MULTIPROC_DIR`` is set at import, named by
slot)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final, TypeVar

from prometheus_client import values
from prometheus_client.parser import text_string_to_metric_families

from kalami_gateway.adapters.metrics import PrometheusMetrics
from kalami_gateway.domain.instance import InstanceConnections

T = TypeVar("T")
# Above any pid Linux hands out (pid_max is at most 2**22): no /proc entry is ever one's.
NO_SUCH_PID: Final = 4_200_001


class FakeWorker:
    """A worker's metrics and connections; everything it records goes through ``act``."""

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self._values = values.MultiProcessValue(lambda: slot)  # type: ignore[no-untyped-call]
        self.connections = InstanceConnections()
        self.metrics = self.act(lambda: PrometheusMetrics(self.connections))

    def act(self, step: Callable[[], T]) -> T:
        with self._as_this_worker():
            return step()

    def scrape(self) -> dict[str, float]:
        return samples(self.act(self.metrics.render))

    @contextmanager
    def _as_this_worker(self) -> Iterator[None]:
        previous = values.ValueClass
        values.ValueClass = self._values
        try:
            yield
        finally:
            values.ValueClass = previous


def samples(text: bytes) -> dict[str, float]:
    """Every sample of an exposition, keyed ``name{label="value",…}`` (labels sorted)."""
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return found


def shape(text: bytes) -> dict[str, tuple[str, frozenset[str]]]:
    """Each family's type and the label names its samples carry."""
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        labels = frozenset(k for s in family.samples for k in s.labels)
        found[family.name] = (family.type, labels)
    return found
