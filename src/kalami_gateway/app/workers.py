"""``serve --workers N``: N uvicorn worker processes, each on a listening socket of its own.

The parent binds the sockets, starts the workers (spawned, so each builds its own app: each
is an instance of the cluster) and supervises them: a worker that dies is replaced.

Each worker has its own listening socket on the one port (``SO_REUSEPORT``): the kernel
spreads new connections over the group's sockets by a hash of their addresses, so each
worker gets its share whatever it is busy with. On one shared socket the kernel woke every
worker for each connection and whichever accepted first won: measured (issue 29), the
busiest worker held 6-15 % more than the mean and reached its open-file limit while others
had room. The parent holds every socket for as long as it runs, so connections that arrive
for a worker being replaced wait in its socket's queue for the replacement, not lost. Before
binding them the parent binds the port once alone, which fails if anything listens there
already (sockets that all ask for ``SO_REUSEPORT`` would share the port with another
``serve`` of the same user instead of failing). The admin port (``ADMIN_PORT``), lightly
used, is one socket all the workers share. SIGTERM
or SIGINT to the parent is passed on once, as SIGTERM, to every worker, which drains as a
single process does (1001 to its sockets, sessions ended); the parent exits 0 when they have.
Workers ignore SIGINT themselves, so a Ctrl-C in a terminal (sent to the whole process group)
reaches them once, through the parent, and cannot cut a drain short.

A worker does not outlive its supervisor: a supervisor that is killed outright (SIGKILL, the
OOM killer) can pass nothing on, and its workers would go on serving on the port with nobody
to replace one that dies, keeping a new ``serve`` from binding it. Each worker waits on its
parent's sentinel (``multiprocessing.parent_process()``; with spawn, a pipe whose write end
only the parent holds, for as long as the worker runs: it reads end-of-file the moment the
parent is gone, for any reason, and at once if it already was, so there is no race with a
parent that dies while the worker starts). It then drains as on SIGTERM, for at most
``ORPHAN_GRACE_SECONDS``, and exits.

Metrics mean the same whichever worker answers a scrape: the supervisor makes a private
directory the workers keep their metrics in (``PROMETHEUS_MULTIPROC_DIR``, set before the first
is spawned), each worker in the files of its slot (0 to N-1, which its replacement takes over:
the counts go on, the directory does not grow), keeps the live workers' pids there, tells it of
every worker that dies (its connections leave the gauges at once) and removes it when it stops
(adapters/metrics/).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Final, NamedTuple

from kalami_gateway.adapters.capacity import raise_open_files_limit
from kalami_gateway.adapters.metrics import SharedMetricsDir, shared_metrics_dir, use_worker_slot
from kalami_gateway.app.settings import Settings, SettingsError

log = logging.getLogger(__name__)

_POLL_SECONDS: Final = 0.2
# A worker that keeps dying at start-up is restarted at most this often.
_RESTART_PAUSE_SECONDS: Final = 1.0
# A worker whose supervisor is gone drains as on SIGTERM for at most this long, then exits:
# within a second its port is free for a new ``serve``. A drain with nothing in flight takes
# a few tens of ms; a turn in flight is cut short (with Redis its session is parked first,
# and its client told on resuming that the reply was lost).
ORPHAN_GRACE_SECONDS: Final = 0.8


class Listeners(NamedTuple):
    """The public port's sockets (one per worker; one in a single process) and the admin
    port's (shared), if any."""

    public: list[socket.socket]
    admin: socket.socket | None

    def of_worker(self, slot: int) -> list[socket.socket]:
        """What worker ``slot`` serves on: its public socket, then the admin one."""
        return [self.public[slot], *([self.admin] if self.admin is not None else [])]

    def close(self) -> None:
        for sock in [*self.public, *([self.admin] if self.admin is not None else [])]:
            sock.close()


def listen(settings: Settings, workers: int = 1) -> Listeners:
    """The listening sockets — GATEWAY_PORT's, one per worker, then ADMIN_PORT's when set —
    or a SettingsError naming the setting: an address that does not resolve, is not this
    machine's, or a port in use is a setting's problem."""
    public = _listen(settings, settings.gateway_port, "GATEWAY_HOST/GATEWAY_PORT", workers)
    admin = None
    if settings.admin_port:
        try:
            admin = _listen(settings, settings.admin_port, "GATEWAY_HOST/ADMIN_PORT", 1)[0]
        except SettingsError:
            for sock in public:
                sock.close()
            raise
    return Listeners(public, admin)


def _listen(settings: Settings, port: int, names: str, count: int) -> list[socket.socket]:
    """``count`` sockets listening on ``port`` (more than one: each with SO_REUSEPORT)."""
    where = f"{settings.gateway_host}:{port}"
    try:
        infos = socket.getaddrinfo(settings.gateway_host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise SettingsError(
            f"GATEWAY_HOST: cannot resolve {settings.gateway_host!r} ({exc.strerror})"
        ) from None
    family, kind, proto, _, address = infos[0]
    sockets: list[socket.socket] = []
    try:
        if count > 1:
            # Alone first: fails if anything listens on the port already (see the docstring).
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
                address = probe.getsockname()  # port 0: the port the kernel chose, for all
        for _ in range(count):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if count > 1:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
            sock.listen(4096)
            sock.set_inheritable(True)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise SettingsError(f"{names}: cannot listen on {where} ({exc.strerror or exc})") from None
    return sockets


def _worker(sockets: list[socket.socket], slot: int) -> None:
    """One worker process: the gateway as a single process would run it, on ``sockets``; its
    metrics in ``slot``'s files of the shared directory."""
    use_worker_slot(slot)  # before the app makes its first metric
    raise_open_files_limit()  # before the app computes its ceiling from it
    # Imported here: the spawned child starts from a clean interpreter.
    from kalami_gateway.app.factory import create_app
    from kalami_gateway.app.server import GatewayServer, uvicorn_config
    from kalami_gateway.app.settings import load_settings

    exit_with_supervisor()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    settings = load_settings()
    app = create_app(settings)
    server = GatewayServer(
        uvicorn_config(app, settings),
        app,
        settings.shutdown_timeout,
        signals=(signal.SIGTERM,),
        tune_gc=True,
    )
    server.run(sockets=sockets)


def exit_with_supervisor() -> None:
    """In a worker: when the supervisor is gone, SIGTERM to itself (the usual drain), and
    ``ORPHAN_GRACE_SECONDS`` later an exit whatever the drain has got to."""
    supervisor = multiprocessing.parent_process()
    if supervisor is None:  # not started by a Supervisor
        return

    def watch() -> None:
        supervisor.join()  # returns once the supervisor has gone, for whatever reason
        log.warning(
            "worker_orphaned",
            extra={"supervisor_pid": supervisor.pid, "grace_s": ORPHAN_GRACE_SECONDS},
        )
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(ORPHAN_GRACE_SECONDS)
        os._exit(1)  # the drain did not finish in time; nobody waits for this status

    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()


class Supervisor:
    def __init__(self, settings: Settings, count: int) -> None:
        self._settings = settings
        self._count = count
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[BaseProcess] = []
        self._stopping = False

    def run(self, listeners: Listeners) -> int:
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            with contextlib.ExitStack() as stack:
                try:
                    metrics = stack.enter_context(shared_metrics_dir())
                except OSError as exc:  # made under TMPDIR: a read-only root needs a /tmp
                    raise SettingsError(
                        f"TMPDIR: cannot make the workers' metrics directory ({exc.strerror})"
                    ) from None
                self._workers = [self._start(listeners, slot) for slot in range(self._count)]
                metrics.workers_are(self._live_pids())
                log.info(
                    "workers_started",
                    extra={"workers": self._count, "pids": [w.pid for w in self._workers]},
                )
                while not self._stopping:
                    time.sleep(_POLL_SECONDS)
                    self._replace_dead(listeners, metrics)
                return self._drain()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            listeners.close()

    def _start(self, listeners: Listeners, slot: int) -> BaseProcess:
        process = self._context.Process(
            target=_worker, args=(listeners.of_worker(slot), slot), daemon=False
        )
        process.start()
        return process

    def _live_pids(self) -> list[int]:
        return [w.pid for w in self._workers if w.pid is not None and w.is_alive()]

    def _replace_dead(self, listeners: Listeners, metrics: SharedMetricsDir) -> None:
        for slot, worker in enumerate(self._workers):
            if worker.is_alive() or self._stopping:
                continue
            log.warning("worker_died", extra={"pid": worker.pid, "exitcode": worker.exitcode})
            metrics.worker_gone(slot)  # before its replacement opens the slot's files
            metrics.workers_are(self._live_pids())
            time.sleep(_RESTART_PAUSE_SECONDS if worker.exitcode not in (0, None) else 0)
            if not self._stopping:
                self._workers[slot] = self._start(listeners, slot)
                metrics.workers_are(self._live_pids())
                log.info("worker_replaced", extra={"pid": self._workers[slot].pid})

    def _stop(self, signum: int, _: FrameType | None) -> None:
        if self._stopping:
            return
        self._stopping = True
        for worker in self._workers:
            if worker.is_alive() and worker.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGTERM)

    def _drain(self) -> int:
        deadline = time.monotonic() + self._settings.shutdown_timeout + 10
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        stragglers = [w for w in self._workers if w.is_alive()]
        for worker in stragglers:
            log.warning("worker_killed_after_drain_timeout", extra={"pid": worker.pid})
            worker.kill()
            worker.join(5)
        log.info("workers_stopped", extra={"workers": len(self._workers)})
        return 0
