"""uvicorn's websockets-sansio protocol, with liveness that a rate limit cannot fool.

A connection over its rate (WS_MESSAGE_RATE, WS_AUDIO_RATE) is read slowly on purpose, so
the pong to a protocol ping may sit in the socket behind many of its messages for longer
than the ping timeout; uvicorn would then drop a client that is plainly alive. Here:

- any frame read from the peer counts as a pong (a client whose messages arrive is alive);
- a ping that times out while the gateway itself is not reading (messages of the peer still
  waiting for the app, reading paused) is not held against the peer: the next ping is
  scheduled instead. Once the gateway reads again, a dead peer fails the next one.
"""

from __future__ import annotations

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol


class LivelyWebSocketProtocol(WebSocketsSansIOProtocol):
    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.pong_timer is not None and not self.close_sent:
            self.pong_timer.cancel()
            self.pong_timer = None
            self.pending_ping_payload = None
            self.schedule_ping()

    def keepalive_timeout(self) -> None:
        if (self.read_paused or not self.queue.empty()) and not self.close_sent:
            self.pong_timer = None
            self.pending_ping_payload = None
            self.schedule_ping()
            return
        super().keepalive_timeout()
