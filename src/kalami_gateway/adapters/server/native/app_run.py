"""The app's run on a native connection, as uvicorn runs it: the upgrade request read into the
ASGI scope (``SOCKET_CONTROL`` in its extensions: the protocol itself), the app's task
(``server_state.tasks``), a 500 for an app that fails before it answers, the message loop
the app handed over (``hand_off``) run once the app has returned, and the connection let go
once both the app and the socket are done."""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import unquote

from uvicorn.protocols.utils import (
    ClientDisconnected,
    get_local_addr,
    get_remote_addr,
    is_ssl,
)

from kalami_gateway.adapters.asgi import SOCKET_CONTROL
from kalami_gateway.adapters.server.native import handshake as hs
from kalami_gateway.adapters.server.native.connection import (
    CONNECTING,
    REFUSED,
    NativeConnection,
)


class AppRun(NativeConnection):
    __slots__ = ()

    def _connect(self, head: bytes) -> None:
        """The upgrade request: a bad one is answered as websockets answers it; a good one
        gets its scope, and the app runs."""
        self._phase = CONNECTING
        shake = hs.read_request(head)
        if shake is None:
            judged = hs.judged_by_websockets(head, self._config.ws_max_size)
            if judged.refusal or judged.request is None or judged.response is None:
                self._phase = REFUSED
                self._close_sent = True
                self.transport.write(judged.refusal)
                self.transport.close()
                return
            shake = hs.handshake_of(judged.request, judged.response)
        self._handshake = shake
        config = self._config
        transport = self.transport
        root_path = config.root_path
        raw_path, _, query = shake.target.partition("?")
        self.scope = {
            "type": "websocket",
            "asgi": {"version": config.asgi_version, "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": "wss" if is_ssl(transport) else "ws",
            "server": get_local_addr(transport),
            "client": get_remote_addr(transport),
            "root_path": root_path,
            "path": root_path + unquote(raw_path),
            "raw_path": root_path.encode("ascii") + raw_path.encode("ascii"),
            "query_string": query.encode("ascii"),
            "headers": shake.headers,
            "subprotocols": shake.subprotocols,
            "state": self._app_state.copy(),
            "extensions": {"websocket.http.response": {}, SOCKET_CONTROL: self},
        }
        self._inbox.put({"type": "websocket.connect"})
        task = self.loop.create_task(self._run_asgi())
        task.add_done_callback(self._on_task_complete)
        self._server_state.tasks.add(task)

    async def _run_asgi(self) -> None:
        logger = logging.getLogger("uvicorn.error")
        try:
            result = await self._app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            pass
        except BaseException:
            logger.exception("Exception in ASGI application\n")
            self._send_500()
        else:
            if self._phase == CONNECTING and self.transport.is_closing():
                pass  # the client left (a FIN, a reset) while the app decided: nobody to tell
            elif self._phase == CONNECTING:
                logger.error("ASGI callable returned without completing handshake.")
                self._send_500()
            elif result is not None:
                logger.error("ASGI callable should return None, but returned '%s'.", result)
        serving = self._serving
        if serving is not None:
            # The app handed its message loop over (``hand_off``) and returned: its call
            # chain is gone, and so is what its layers put in the scope.
            self._serving = None
            scope, self.scope = self.scope, None
            if scope is not None:
                scope.clear()
            try:
                await serving
            except BaseException:
                logger.exception("Exception in ASGI application\n")
        if self._close_timer is None:
            self.transport.close()

    def _on_task_complete(self, task: asyncio.Task[None]) -> None:
        self._server_state.tasks.discard(task)
        self._app_done = True
        self._let_go()

    def _send_500(self) -> None:
        if self._phase != CONNECTING or self._denial is not None:
            return
        self._phase = REFUSED
        self.transport.write(hs.rejection(500, "Internal Server Error"))

    def _let_go(self) -> None:
        """Once the app has returned and the socket is gone, nothing runs for this connection
        again: break the cycle through the scope (its extensions hold this protocol)."""
        if not (self._lost and self._app_done):
            return
        if self.scope is not None:
            self.scope.clear()
        self._parser = None
        self._handshake = None
