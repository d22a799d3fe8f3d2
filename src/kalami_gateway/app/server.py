"""Serving the gateway with uvicorn, with a graceful WebSocket drain on SIGTERM/SIGINT.

uvicorn's own shutdown closes WebSockets with 1012 before the lifespan shutdown runs, so the
app cannot send 1001 from a shutdown hook. ``GatewayServer`` drains first: every socket gets
1001 ``Server shutting down`` and its session is ended, then uvicorn's shutdown proceeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from typing import cast

import uvicorn

from kalami_gateway.adapters.server import (
    Acceptor,
    guarded_http_protocol,
    lively_websocket_protocol,
    trim_after_mass_close,
)
from kalami_gateway.adapters.server.native.protocol import native_websocket_protocol
from kalami_gateway.app.factory import GatewayApp
from kalami_gateway.app.settings import Settings, SettingsError
from kalami_gateway.app.settings.loading import NATIVE_WITHOUT_DEFLATE

log = logging.getLogger(__name__)

# The cyclic garbage collector, tuned for a server that holds thousands of connections (see
# ``collect_less``): young collections every 50,000 allocations instead of 700.
GC_THRESHOLDS = (50_000, 10, 10)


def collect_less() -> None:
    """Keep the cyclic garbage collector from stopping the event loop for long.

    Measured with the bench's idle-socket case (bench/README.md, "Garbage collection"): under
    load a full collection ran every ~1.6 s and walked every object of the process — 30-60 ms
    with no socket open (the app itself), 400+ ms with 5000 open, the whole of the proxy's
    p99. So: everything alive once the app has started lives as long as the process and is
    frozen out of the collector's sight; and young collections, each of which promotes what
    is alive at that moment (requests in flight) toward the full one, run 70 times less
    often. Cycles are still collected (a closed connection is one); a young collection costs
    a few ms. Process-wide, so only for the processes ``kalami-gateway serve`` owns.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class GatewayServer(uvicorn.Server):
    def __init__(
        self,
        config: uvicorn.Config,
        app: GatewayApp,
        drain_timeout: float,
        signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM),
        tune_gc: bool = False,
    ) -> None:
        super().__init__(config)
        self._tune_gc = tune_gc  # the process is ours (kalami-gateway serve), not a host's
        self._gateway = app
        self._drain_timeout = drain_timeout
        self._signals = signals
        self._metrics_flush: asyncio.Task[None] | None = None
        self._memory_trim: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Like uvicorn's, without re-raising the signal afterwards.

        uvicorn re-raises SIGTERM/SIGINT once it has shut down, so the process dies of the
        signal (status 143/130). A graceful drain is a clean exit: status 0.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in self._signals}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn's startup without its servers (the lifespan, the server state); the
        # gateway accepts on the sockets itself (adapters/server/acceptor.py).
        await super().startup(sockets=[])
        if sockets is None:  # not handed any: the configured host and port
            sockets = [self.config.bind_socket()]
        state = self.server_state
        capacity = self._gateway.capacity
        capacity.count_with(lambda: len(state.connections))
        log.info(
            "connection_ceiling",
            extra={
                "ceiling": capacity.ceiling,
                "open_files_limit": capacity.open_files_limit,
                "headroom": capacity.headroom._asdict()
                if capacity.headroom
                else "MAX_CLIENT_SOCKETS",
            },
        )
        config = self.config

        def protocol() -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=state, app_state=self.lifespan.state
            )

        acceptors = [Acceptor(sock, protocol, capacity, config.backlog) for sock in sockets]
        self.servers = cast("list[asyncio.base_events.Server]", acceptors)  # what uvicorn closes
        if self._tune_gc:
            collect_less()
            # After a mass close the C allocator gives back what it holds free.
            self._memory_trim = asyncio.create_task(
                trim_after_mass_close(lambda: len(state.connections))
            )
        metrics = self._gateway.metrics
        if metrics.shared_dir is not None:
            # A worker of serve --workers: its tallies and connection figures reach the
            # group's scrapes through the shared directory, at most FLUSH_SECONDS late.
            self._metrics_flush = asyncio.create_task(metrics.keep_flushed())

    async def shutdown(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        if self._memory_trim is not None:
            self._memory_trim.cancel()
        try:
            await asyncio.wait_for(self._gateway.drain(), self._drain_timeout)
        except TimeoutError:
            log.warning("ws_drain_timed_out", extra={"timeout_s": self._drain_timeout})
        if self._metrics_flush is not None:
            self._metrics_flush.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._metrics_flush
            self._gateway.metrics.flush()  # its last tallies, and no connections, before it exits
        await super().shutdown(sockets)  # type: ignore[arg-type]


def websocket_protocol(settings: Settings) -> type[asyncio.Protocol]:
    """The WebSocket protocol class WS_ENGINE names, with the gateway's budgets."""
    if settings.ws_engine == "native":
        if settings.ws_per_message_deflate:
            raise SettingsError(NATIVE_WITHOUT_DEFLATE)
        return native_websocket_protocol(settings.ws_frame_rate, settings.ws_send_buffer_bytes)
    return lively_websocket_protocol(settings.ws_frame_rate, settings.ws_send_buffer_bytes)


def uvicorn_config(app: GatewayApp, settings: Settings) -> uvicorn.Config:
    """The production server settings (chosen by measurement; see bench/README.md)."""
    return uvicorn.Config(
        app.asgi,
        host=settings.gateway_host,
        port=settings.gateway_port,
        loop="uvloop",
        # httptools with a header deadline and size limits (adapters/server/http_protocol.py).
        http=guarded_http_protocol(
            settings.http_header_timeout_ms / 1000, settings.max_header_bytes, app.capacity
        ),
        # WS_ENGINE: websockets-sansio, or the gateway's own protocol; either with liveness that
        # the rate limits cannot fool and budgets for what a peer may make it do.
        ws=websocket_protocol(settings),
        ws_max_size=settings.max_message_bytes,
        ws_ping_interval=settings.heartbeat_interval,
        ws_ping_timeout=settings.heartbeat_interval,
        ws_per_message_deflate=settings.ws_per_message_deflate,
        lifespan="on",
        # X-Forwarded-* are judged by the gateway against TRUSTED_PROXIES, not by uvicorn.
        proxy_headers=False,
        server_header=False,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=max(1, round(settings.shutdown_timeout)),
        backlog=4096,
    )


def serve(app: GatewayApp, sockets: list[socket.socket]) -> None:
    """Serve on ``sockets`` (bound by the caller, so a bad address is a settings error)."""
    settings = app.settings
    server = GatewayServer(
        uvicorn_config(app, settings), app, settings.shutdown_timeout, tune_gc=True
    )
    server.run(sockets=sockets)
