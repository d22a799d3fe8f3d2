"""Prometheus metrics (prometheus-client), every name of the gateway's own prefixed
``kalami_``, beside the standard ``process_*`` figures of each serving process and
``kalami_build_info``. ``PrometheusMetrics`` (``prometheus.py``) is the Metrics port and the
``GET /metrics`` text; one scrape means the same under any process layout: one process
answers for itself, and any worker of ``serve --workers N`` for the whole group, through a
directory the workers share (``shared.py``) that their supervisor makes, tends and removes
(``group.py``). ``families.py`` names every family once; ``tallies.py`` holds the hot-path
counters and one process's collectors; ``processes.py`` the process figures;
``process_load.py`` each serving process's sockets against its ceiling (per pid: the spread
``/stats`` shows) and what was refused at the limit.
"""

from kalami_gateway.adapters.metrics.group import SharedMetricsDir, shared_metrics_dir
from kalami_gateway.adapters.metrics.process_load import ProcessLoad, ServingProcess, spread
from kalami_gateway.adapters.metrics.prometheus import CONTENT_TYPE, PrometheusMetrics
from kalami_gateway.adapters.metrics.shared import FLUSH_SECONDS, MULTIPROCESS_ENV, use_worker_slot

__all__ = [
    "CONTENT_TYPE",
    "FLUSH_SECONDS",
    "MULTIPROCESS_ENV",
    "ProcessLoad",
    "PrometheusMetrics",
    "ServingProcess",
    "SharedMetricsDir",
    "shared_metrics_dir",
    "spread",
    "use_worker_slot",
]
