"""The service on fakes, wired as the container wires it on adapters: a ``SessionCleanup`` of
its own (unless one is handed in) and every timer on the fake clock (``ClockSleep``)."""

from __future__ import annotations

from collections.abc import Callable

from kalami_gateway.adapters.memory.directory import InMemoryDirectory
from kalami_gateway.application import GatewayService, ServiceLimits, SessionCleanup, Sleep
from kalami_gateway.application.connections import new_connection_id, new_resume_token
from kalami_gateway.domain.auth import AuthPolicy
from kalami_gateway.domain.instance import InstanceConnections
from kalami_gateway.domain.ports import SessionParking
from tests.unit.application.clock_sleep import ClockSleep
from tests.unit.fakes import FakeBackend, FakeClock, FakeCredentials, FakeDecoder, FakeMetrics


def gateway_on_fakes(
    limits: ServiceLimits,
    *,
    backend: FakeBackend,
    clock: FakeClock,
    decoder: FakeDecoder,
    metrics: FakeMetrics,
    directory: InMemoryDirectory | None = None,
    parking: SessionParking | None = None,
    cleanup: SessionCleanup | None = None,
    sleep: Sleep | None = None,
    new_id: Callable[[], str] = new_connection_id,
    new_resume_token: Callable[[], str] = new_resume_token,
) -> GatewayService:
    credentials = FakeCredentials()
    sleep = ClockSleep(clock) if sleep is None else sleep
    if cleanup is None:
        cleanup = SessionCleanup(
            backend,
            metrics,
            clock,
            limits.backend_timeout,
            limits.end_retry_window,
            credentials,
            sleep=sleep,
        )
    return GatewayService(
        backend=backend,
        directory=InMemoryDirectory() if directory is None else directory,
        clock=clock,
        auth=AuthPolicy(decoder, leeway_seconds=0),
        metrics=metrics,
        limits=limits,
        credentials=credentials,
        cleanup=cleanup,
        instance=InstanceConnections(),
        parking=parking,
        sleep=sleep,
        new_id=new_id,
        new_resume_token=new_resume_token,
    )
