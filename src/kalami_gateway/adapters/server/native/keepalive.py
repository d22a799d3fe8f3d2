"""The native engine's heartbeat: a ping every ``ws_ping_interval`` on the loop's shared timer
(``heartbeats``), any frame from the peer standing for the pong it owes, and a missed pong not
held against a peer the gateway itself is not reading unless its kernel has stopped
acknowledging too (``liveness``, one for both engines). The uvicorn engine does the same
through uvicorn's own keepalive (``LivelyWebSocketProtocol.keepalive_timeout``)."""

from __future__ import annotations

import logging
import random
import struct
from typing import Final, cast

from kalami_gateway.adapters.server import heartbeats
from kalami_gateway.adapters.server.liveness import pong_excused
from kalami_gateway.adapters.server.native.connection import NativeConnection
from kalami_gateway.adapters.server.native.serializer import close_frame, ping_frame

log = logging.getLogger(__name__)

_pack_ping: Final = struct.Struct("!I").pack


class Keepalive(NativeConnection):
    __slots__ = ()

    def _start_keepalive(self) -> None:
        interval = self._config.ws_ping_interval
        if interval is not None and interval > 0:
            self._schedule_ping()

    def _stop_keepalive(self) -> None:
        if self._ping_timer is not None:
            self._ping_timer.cancel()
            self._ping_timer = None
        if self._pong_timer is not None:
            self._pong_timer.cancel()
            self._pong_timer = None
        self._ping_payload = None

    def _schedule_ping(self) -> None:
        """The next ping, on the loop's shared heartbeat timer."""
        interval = cast(float, self._config.ws_ping_interval)
        self._ping_timer = heartbeats.next_ping(self.loop, interval, self._last_rtt, self._ping)

    def _ping(self) -> None:
        self._ping_timer = None
        if self._close_sent or self.transport.is_closing():
            return
        payload = self._ping_payload = _pack_ping(random.getrandbits(32))
        self._ping_sent_at = self.loop.time()
        self.transport.write(ping_frame(payload))
        timeout = self._config.ws_ping_timeout
        if timeout is not None:
            self._pong_timer = self.loop.call_later(timeout, self._pong_timed_out)
        else:
            self._schedule_ping()

    def _pong(self, payload: bytes) -> None:
        if self._ping_payload is None or payload != self._ping_payload:
            return  # unsolicited, or stale
        self._last_rtt = self.loop.time() - self._ping_sent_at
        self._ping_payload = None
        if self._pong_timer is not None:
            self._pong_timer.cancel()
            self._pong_timer = None
            self._schedule_ping()

    def _alive(self) -> None:
        """A frame from the peer stands for the pong it owes."""
        assert self._pong_timer is not None  # noqa: S101  # checked by the caller
        self._pong_timer.cancel()
        self._pong_timer = None
        self._ping_payload = None
        self._schedule_ping()

    def _pong_timed_out(self) -> None:
        """No drop while the gateway itself is not reading (``liveness.pong_excused``)."""
        timeout = cast(float, self._config.ws_ping_timeout)  # a pong timer ran
        if not self._close_sent and pong_excused(self, timeout, self._ping_again):
            return
        self._pong_timer = None
        self._ping_payload = None
        if self._close_sent or self.transport.is_closing():
            return
        # Counted as ping_timeout (kalami_websocket_closed_total).
        log.info("ws_ping_timed_out", extra={"timeout_s": self._config.ws_ping_timeout})
        self._unanswered = True
        self.transport.write(close_frame(1011, "keepalive ping timeout"))
        self._close_sent = True
        self.transport.close()

    def _ping_again(self) -> None:
        """A ping at once, its pong still owed: with reading paused only a write notices a
        peer that has gone with a reset."""
        self._pong_timer = None
        self._ping_payload = None
        self._ping()
