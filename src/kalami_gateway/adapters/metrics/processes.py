"""What an operator pages on besides the gateway's own figures: each serving process's
resident memory, CPU and open files against its limit (the standard ``process_*`` names, as
prometheus-client's ProcessCollector reads them from ``/proc``), and ``kalami_build_info``.

Every ``process_*`` series carries a ``pid`` label, in both layouts: the open-file limit is
per process, so ``process_open_fds / process_max_fds`` means something only per process, and a
sum of CPU seconds over workers would go backwards whenever one is replaced. Sum them in the
query (``sum by (instance) (process_resident_memory_bytes)``). The worker answering a scrape
reads every live worker's ``/proc`` entries itself, at scrape time: nothing is read between
scrapes, and a dead worker's series are gone at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kalami_gateway import __version__
from kalami_gateway.adapters.metrics.families import BUILD_INFO


def _reader(pid: int) -> ProcessCollector:
    return ProcessCollector(pid=lambda: pid, registry=None)


class ProcessFigures(Collector):
    """The ``process_*`` figures of every process ``pids()`` names, each labelled ``pid``; a
    process that has gone meanwhile is left out."""

    def __init__(self, pids: Callable[[], Iterable[int]]) -> None:
        self._pids = pids
        self._readers: dict[int, ProcessCollector] = {}

    def collect(self) -> Iterator[Metric]:
        readers = {pid: self._readers.get(pid) or _reader(pid) for pid in sorted(self._pids())}
        self._readers = readers  # the dead ones' readers dropped
        families: dict[str, Metric] = {}
        for pid, reader in readers.items():
            for metric in reader.collect():
                family = families.get(metric.name)
                if family is None:
                    family = families[metric.name] = Metric(
                        metric.name, metric.documentation, metric.type
                    )
                for sample in metric.samples:
                    family.add_sample(sample.name, {**sample.labels, "pid": str(pid)}, sample.value)
        yield from families.values()


def open_files(pid: int) -> tuple[int | None, int | None]:
    """A process's open files and its open-file limit, as ``process_open_fds`` and
    ``process_max_fds`` read them from ``/proc`` (None: not readable, or the process gone)."""
    figures = {metric.name: metric.samples[0].value for metric in _reader(pid).collect()}
    count, limit = figures.get("process_open_fds"), figures.get("process_max_fds")
    return (
        None if count is None else int(count),
        None if limit is None else int(limit),
    )


class BuildInfo(Collector):
    """``kalami_build_info{version="…"} 1``."""

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(BUILD_INFO.name, BUILD_INFO.help, labels=list(BUILD_INFO.labels))
        info.add_metric([__version__], 1)
        yield info
