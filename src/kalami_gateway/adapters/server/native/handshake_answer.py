"""The app's answer to the opening handshake on the native engine, as uvicorn's
websockets-sansio protocol gives it: the accept (the 101, then the heartbeat and the frame
budget start, and frames the client sent behind its request are answered), a close before
the accept (403), or the app's own HTTP response (``websocket.http.response.start`` and
``.body``: a denial). ``handshake`` builds the bytes."""

from __future__ import annotations

import logging
from typing import Any, cast

from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from kalami_gateway.adapters.server.metered_reads import feed_stash, refill
from kalami_gateway.adapters.server.native import handshake as hs
from kalami_gateway.adapters.server.native.connection import OPEN, REFUSED, NativeConnection
from kalami_gateway.adapters.server.native.parser import FrameParser


class HandshakeAnswer(NativeConnection):
    __slots__ = ()

    def _answer_handshake(self, message: Any) -> None:
        kind = message["type"]
        scope = cast("dict[str, Any]", self.scope)
        transport = self.transport
        if kind == "websocket.accept":
            _logged(scope, "[accepted]")
            shake = self._handshake
            assert shake is not None  # noqa: S101  # set with the scope
            if transport.is_closing():
                return
            extra = list(self._server_state.default_headers) + list(message.get("headers", []))
            transport.write(hs.switching_protocols(shake.accept, extra, message.get("subprotocol")))
            self._handshake = None
            self._phase = OPEN
            self._parser = FrameParser(self._config.ws_max_size)
            self._start_keepalive()
            refill(self)  # the frame budget starts full
            if self._stash is not None:
                feed_stash(self)
        elif kind == "websocket.close":
            self._inbox.put({"type": "websocket.disconnect", "code": 1006})
            _logged(scope, "403")
            self._refuse(hs.rejection(403, ""))
        elif kind == "websocket.http.response.start":
            status = message["status"]
            if not 100 <= status < 600:
                raise RuntimeError(f"Invalid HTTP status code '{status}' in response.")
            _logged(scope, "%d", status)
            self._denial = (status, list(message.get("headers", [])), b"")
        else:
            raise RuntimeError(
                "Expected ASGI message 'websocket.accept', 'websocket.close' "
                f"or 'websocket.http.response.start' but got '{kind}'."
            )

    def _deny_more(self, message: Any) -> None:
        assert self._denial is not None  # noqa: S101  # checked by the caller
        if message["type"] != "websocket.http.response.body":
            raise RuntimeError(
                f"Expected ASGI message 'websocket.http.response.body' but got '{message['type']}'."
            )
        if self._close_sent:
            raise RuntimeError("Unexpected ASGI message after the response was sent.")
        status, headers, body = self._denial
        body += message["body"]
        self._denial = (status, headers, body)
        if not message.get("more_body", False):
            self._inbox.put({"type": "websocket.disconnect", "code": 1006})
            self._refuse(hs.denial(status, headers, body))

    def _refuse(self, response: bytes) -> None:
        self._phase = REFUSED
        self._close_sent = True
        self._stash = None
        self.transport.write(response)
        self.transport.close()


def _logged(scope: dict[str, Any], answer: str, *args: object) -> None:
    """The answer, on uvicorn's error logger as its WebSocket protocol logs it (the same
    message and arguments: ``app/logs.py`` masks the token in the path)."""
    logger = logging.getLogger("uvicorn.error")
    if logger.isEnabledFor(logging.INFO):
        logger.info(
            '%s - "WebSocket %s" ' + answer,
            get_client_addr(scope),  # type: ignore[arg-type]
            get_path_with_query_string(scope),  # type: ignore[arg-type]
            *args,
        )
