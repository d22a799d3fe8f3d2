"""The supervisor's directory: private, named to the workers it spawns, holding each worker's
values in its slot's files and the live workers' pids, removed at the end."""

from __future__ import annotations

import os
import stat

import pytest
from prometheus_client import values

from kalami_gateway.adapters.metrics import (
    MULTIPROCESS_ENV,
    PrometheusMetrics,
    SharedMetricsDir,
    shared_metrics_dir,
    use_worker_slot,
)
from kalami_gateway.adapters.metrics.shared import worker_pids
from kalami_gateway.domain.instance import InstanceConnections
from tests.unit.adapters.metrics.fakes import ClientSockets


def test_the_directory_is_private_named_meanwhile_and_removed_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(MULTIPROCESS_ENV, "/somewhere/an/operator/named")
    with shared_metrics_dir() as shared:
        assert os.environ[MULTIPROCESS_ENV] == shared.path
        assert stat.S_IMODE(os.stat(shared.path).st_mode) == 0o700
        with open(os.path.join(shared.path, "counter_1.db"), "wb") as written:
            written.write(b"x")
    assert not os.path.exists(shared.path)
    assert os.environ[MULTIPROCESS_ENV] == "/somewhere/an/operator/named"


def test_without_a_variable_before_none_is_left_after(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MULTIPROCESS_ENV, raising=False)
    with pytest.raises(KeyError), shared_metrics_dir() as shared:
        raise KeyError(shared.path)  # a supervisor that fails still cleans up
    assert MULTIPROCESS_ENV not in os.environ
    assert not os.path.exists(shared.path)


def test_a_worker_keeps_its_values_in_its_slots_files(
    shared_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(values, "ValueClass", values.ValueClass)  # restored afterwards
    use_worker_slot(3)
    metrics = PrometheusMetrics(InstanceConnections(), ClientSockets().capacity)
    metrics.connection_closed("normal")
    files = sorted(os.listdir(shared_dir))
    assert "counter_3.db" in files
    assert [name for name in files if not name.endswith("_3.db")] == []


def test_the_live_workers_are_listed_for_the_scrapes(shared_dir: str) -> None:
    shared = SharedMetricsDir(shared_dir)
    shared.workers_are([12, 7])
    assert worker_pids(shared_dir) == {7, 12}
    shared.workers_are([7])
    assert worker_pids(shared_dir) == {7}
    assert worker_pids(os.path.join(shared_dir, "elsewhere")) == set()
