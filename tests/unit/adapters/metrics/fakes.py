"""Workers of one group, in this process: each one's prometheus-client values live in the files
of its slot, as a spawned worker's do (``use_worker_slot``: ``values.MultiProcessValue``, the
class prometheus-client picks when ``PROMETHEUS_MULTIPROC_DIR`` is set at import, named by
slot)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final, TypeVar

from prometheus_client import values
from prometheus_client.parser import text_string_to_metric_families

from kalami_gateway.adapters.capacity import Ceiling, SocketCapacity
from kalami_gateway.adapters.metrics import PrometheusMetrics
from kalami_gateway.domain.instance import InstanceConnections

T = TypeVar("T")
# Above any pid Linux hands out (pid_max is at most 2**22): no /proc entry is ever one's.
NO_SUCH_PID: Final = 4_200_001


class ClientSockets:
    """A process's client sockets as its server would count them, set by the test, against a
    real ``SocketCapacity``."""

    def __init__(self, ceiling: int = 100, open_files_limit: int = 1024) -> None:
        self.open = 0
        self.capacity = SocketCapacity(Ceiling(ceiling, open_files_limit, None))
        self.capacity.count_with(lambda: self.open)

    def past_the_ceiling(self, handshakes: int) -> None:
        """``handshakes`` WebSocket handshakes arrive while the process holds one socket more
        than its ceiling: each is refused."""
        self.open = self.capacity.ceiling + 1
        for _ in range(handshakes):
            assert not self.capacity.admits_websocket()


class FakeWorker:
    """A worker's metrics, connections and client sockets; everything it records goes
    through ``act``. ``pid``: whose figures they are (each of several fake workers needs its
    own; this test process's by default)."""

    def __init__(self, slot: int, pid: int | None = None) -> None:
        self.slot = slot
        self.pid = pid or os.getpid()
        self._values = values.MultiProcessValue(lambda: slot)  # type: ignore[no-untyped-call]
        self.connections = InstanceConnections()
        self.sockets = ClientSockets()
        self.metrics = self.act(
            lambda: PrometheusMetrics(self.connections, self.sockets.capacity, pid=self.pid)
        )

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
