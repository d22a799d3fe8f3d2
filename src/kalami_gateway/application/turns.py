"""The connection's state machine, run: events applied, their effects carried out, each by
the handler its type is keyed to; voice turns as tasks of their own, so the connection keeps
answering while the backend works; utterances buffered, or streamed to the backend while
the learner speaks (UTTERANCE_UPLOAD=stream).

A frame's way: ``apply`` -> the state machine's decision -> each effect's handler, which may
call the backend and ``apply`` what came of it (a session started, an upload failed). A turn
ends in ``_finish_turn``: its outcome is applied, or kept in the parking store if the
connection went meanwhile and the turn ran on detached.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from kalami_gateway.application.backend_calls import BackendCalls, backend_problem
from kalami_gateway.application.connections import RUNS_ON, Connection, Connections
from kalami_gateway.application.expiry import TokenExpiry
from kalami_gateway.application.limits import ServiceLimits
from kalami_gateway.application.parked import ParkedSessions
from kalami_gateway.application.sessions import BackendSessions
from kalami_gateway.domain import protocol as p
from kalami_gateway.domain import session as s
from kalami_gateway.domain import session_errors
from kalami_gateway.domain.ports import (
    Backend,
    BackendError,
    Clock,
    Metrics,
    TurnReply,
    Utterance,
    UtteranceUpload,
)

# One handler per effect type: (connection, the effect, the binary frame being handled if any).
# The effect is typed Any here; each handler takes its own type (the table pairs them).
_Handler = Callable[[Connection, Any, bytes | None], Awaitable[None]]


class Turns:
    def __init__(
        self,
        backend: Backend,
        calls: BackendCalls,
        sessions: BackendSessions,
        parked: ParkedSessions,
        expiry: TokenExpiry,
        connections: Connections,
        clock: Clock,
        metrics: Metrics,
        limits: ServiceLimits,
    ) -> None:
        self._backend = backend
        self._calls = calls
        self._sessions = sessions
        self._parked = parked
        self._expiry = expiry
        self._connections = connections
        self._clock = clock
        self._metrics = metrics
        self._max_audio_bytes = limits.max_audio_bytes
        self._stream_uploads = limits.stream_uploads
        self._session_limits = limits.session_limits
        self._handlers: dict[type[s.Effect], _Handler] = {
            s.Send: self._send,
            s.AppendAudio: self._append_audio,
            s.StartUtterance: self._start_utterance,
            s.DropUtterance: self._drop_utterance,
            s.CreateSession: self._create_session,
            s.EndSession: self._end_session,
            s.SubmitUtterance: self._submit_utterance,
            s.SubmitEncodedAudio: self._submit_encoded_audio,
            s.CancelTurn: self._cancel_turn,
        }

    async def apply(self, conn: Connection, event: s.Event, frame: bytes | None = None) -> None:
        decision = s.decide(conn.state, event, self._session_limits)
        conn.state = decision.state
        for effect in decision.effects:
            await self._handlers[type(effect)](conn, effect, frame)

    async def on_disconnect(self, conn: Connection) -> None:
        """The connection went and its session is not parked: clean up after it."""
        effects = s.on_disconnect(conn.state)
        conn.state = s.IDLE
        for effect in effects:
            await self._handlers[type(effect)](conn, effect, None)

    async def _send(self, conn: Connection, effect: s.Send, frame: bytes | None) -> None:
        await conn.channel.send(effect.message)

    async def _append_audio(
        self, conn: Connection, effect: s.AppendAudio, frame: bytes | None
    ) -> None:
        assert frame is not None  # noqa: S101  # only a binary frame appends
        self._metrics.audio_received(len(frame))
        if conn.upload is not None:
            await self._write(conn, conn.upload, frame)
        else:
            conn.chunks.append(frame)

    async def _start_utterance(
        self, conn: Connection, effect: s.StartUtterance, frame: bytes | None
    ) -> None:
        conn.drop_utterance()
        session_id = conn.state.session_id
        if self._stream_uploads and session_id is not None:
            conn.upload = self._backend.open_upload(conn.token, session_id, conn.state.audio_format)

    async def _drop_utterance(
        self, conn: Connection, effect: s.DropUtterance, frame: bytes | None
    ) -> None:
        conn.drop_utterance()

    async def _create_session(
        self, conn: Connection, effect: s.CreateSession, frame: bytes | None
    ) -> None:
        event = await self._sessions.start(
            conn, effect.profile_id, effect.topic, effect.reply_audio
        )
        if event is not None:
            await self.apply(conn, event)

    async def _end_session(
        self, conn: Connection, effect: s.EndSession, frame: bytes | None
    ) -> None:
        await self._sessions.end(conn, effect.session_id)

    async def _submit_utterance(
        self, conn: Connection, effect: s.SubmitUtterance, frame: bytes | None
    ) -> None:
        upload, conn.upload = conn.upload, None
        if upload is not None:
            conn.turn = asyncio.create_task(self._run_turn(conn, upload.finish, effect.answers))
            # However the turn ends (a reply, a deadline, end_session, a cancel before
            # it ran), the upload is over: aborting a finished one changes nothing.
            conn.turn.add_done_callback(lambda _: upload.abort())
        else:
            utterance = Utterance(conn.chunks, effect.audio_format)
            conn.chunks = []
            token = conn.token
            session_id = effect.session_id
            conn.turn = asyncio.create_task(
                self._run_turn(
                    conn,
                    lambda: self._backend.submit_utterance(token, session_id, utterance),
                    effect.answers,
                )
            )

    async def _submit_encoded_audio(
        self, conn: Connection, effect: s.SubmitEncodedAudio, frame: bytes | None
    ) -> None:
        conn.turn = asyncio.create_task(self._run_encoded_turn(conn, effect))

    async def _cancel_turn(
        self, conn: Connection, effect: s.CancelTurn, frame: bytes | None
    ) -> None:
        conn.stop_watchdog()
        turn, conn.turn = conn.turn, None
        if turn is None or turn.done() or turn is asyncio.current_task():
            return
        turn.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await turn

    async def _write(self, conn: Connection, upload: UtteranceUpload, frame: bytes) -> None:
        """A frame into the streamed upload; while the backend reads slower than the learner
        speaks this waits, and this connection is not read meanwhile (back-pressure)."""
        try:
            # Room in the window (the usual case): no wait, so no deadline to arm (a timer
            # per frame was ~5% of a streamed frame's CPU).
            if not upload.offer(frame):
                await self._calls.on_time(upload.write(frame))
        except BackendError as exc:
            self._calls.failed("voice_upload_failed", conn.id, exc)
            await self.apply(
                conn,
                s.UploadFailed(
                    backend_problem(
                        exc,
                        f"Could not send the utterance to the backend: {exc.detail} The rest of "
                        "this recording is ignored; send stop_recording, then record again.",
                    )
                ),
            )

    async def _run_encoded_turn(self, conn: Connection, effect: s.SubmitEncodedAudio) -> None:
        audio = effect.audio
        if len(audio) > self._max_audio_bytes:
            await self._finish_turn(
                conn,
                "too_large",
                0.0,
                s.TurnFailed(
                    session_errors.audio_message_too_large(self._max_audio_bytes), effect.answers
                ),
            )
            return
        utterance = Utterance((audio,), effect.audio_format)
        await self._run_turn(
            conn,
            lambda: self._backend.submit_utterance(conn.token, effect.session_id, utterance),
            effect.answers,
        )

    async def _run_turn(
        self,
        conn: Connection,
        call: Callable[[], Awaitable[TurnReply]],
        answers: p.ClientMessageType,
    ) -> None:
        """Run a turn to its outcome; ``answers``: the message that asked for it (its error
        answers that message)."""
        started = self._clock.monotonic()
        event: s.TurnSucceeded | s.TurnFailed
        try:
            reply = await self._calls.on_time(call())
        except BackendError as exc:
            self._calls.failed("voice_turn_failed", conn.id, exc)
            outcome = f"backend_{exc.kind.value}"
            event = s.TurnFailed(
                backend_problem(
                    exc, f"Could not process the utterance: {exc.detail} Please try again."
                ),
                answers,
            )
        else:
            outcome = "ok"
            event = s.TurnSucceeded(
                transcription=reply.user_text,
                reply_text=reply.assistant_text,
                corrections=reply.corrections,
                vocabulary=reply.vocabulary_introduced,
                audio_base64=reply.assistant_audio_base64,
            )
        await self._finish_turn(conn, outcome, self._clock.monotonic() - started, event)

    async def _finish_turn(
        self, conn: Connection, outcome: str, seconds: float, event: s.TurnSucceeded | s.TurnFailed
    ) -> None:
        self._metrics.turn_finished(outcome, seconds)
        if conn.turn is asyncio.current_task():
            conn.turn = None
        if conn.stage in RUNS_ON:
            self._connections.turn_over(conn)
            await self._parked.keep_outcome(conn, event)
            return
        await self.apply(conn, event)
        await self._expiry.after_turn(conn)
