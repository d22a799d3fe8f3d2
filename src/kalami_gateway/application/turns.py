"""The connection's state machine, run: events applied, their effects carried out, each by
the handler its type is keyed to; voice turns as tasks of their own, so the connection keeps
answering while the backend works; utterances buffered, or streamed to the backend while
the learner speaks (UTTERANCE_UPLOAD=stream).

A frame's way: ``apply`` -> the state machine's decision -> each effect's handler, which may
call the backend and ``apply`` what came of it (a session started, an upload failed). A turn
ends in ``_finish_turn``: its outcome is applied, or kept in the parking store if the
connection went meanwhile and the turn ran on detached.

Traced (a ``Tracing`` given), a voice turn is a span, the session's child, from
``start_recording`` (or the audio message) to its outcome, with three children:
``turn.upload`` (the learner's audio arriving, from ``start_recording`` to
``stop_recording``; a streamed upload's backend call runs in it), ``turn.backend`` (waiting
for the backend's answer: its call carries this span's traceparent) and ``turn.reply`` (the
outcome delivered). Spans are made once per turn, never per audio frame. A turn that fails
(at the backend, or cancelled by ``end_session``, a drain or a cancel before it ran) ends
with its span's status an error saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Final

from kalami_gateway.application.backend_calls import BackendCalls, backend_problem
from kalami_gateway.application.connections import RUNS_ON, Connection, Connections
from kalami_gateway.application.expiry import TokenExpiry
from kalami_gateway.application.limits import ServiceLimits
from kalami_gateway.application.parked import ParkedSessions
from kalami_gateway.application.sessions import SESSION_SPAN, BackendSessions
from kalami_gateway.domain import protocol as p
from kalami_gateway.domain import session as s
from kalami_gateway.domain import session_errors
from kalami_gateway.domain.ports import (
    Backend,
    BackendError,
    Clock,
    Metrics,
    TraceSpan,
    Tracing,
    TurnReply,
    Utterance,
    UtteranceUpload,
)

# One handler per effect type: (connection, the effect, the binary frame being handled if any).
# The effect is typed Any here; each handler takes its own type (the table pairs them).
_Handler = Callable[[Connection, Any, bytes | None], Awaitable[None]]
# The spans of a turn (TURN_SPAN and UPLOAD_SPAN filed under the connection's id while the
# learner records).
TURN_SPAN: Final = "turn"
UPLOAD_SPAN: Final = "turn.upload"
BACKEND_SPAN: Final = "turn.backend"
REPLY_SPAN: Final = "turn.reply"


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
        tracing: Tracing | None = None,
    ) -> None:
        self._backend = backend
        self._tracing = tracing
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
        tracing = self._tracing
        if tracing is not None:
            self._drop_turn_spans(tracing, conn)
            turn = tracing.start(
                TURN_SPAN,
                parent=tracing.owned(conn.id, SESSION_SPAN),
                owner=conn.id,
                attributes=_ids(conn.id, session_id),
            )
            upload = tracing.start(UPLOAD_SPAN, parent=turn, owner=conn.id)
            if self._stream_uploads and session_id is not None:
                with tracing.current(upload):  # the upload's request task takes this context
                    conn.upload = self._backend.open_upload(
                        conn.token, session_id, conn.state.audio_format
                    )
            return
        if self._stream_uploads and session_id is not None:
            conn.upload = self._backend.open_upload(conn.token, session_id, conn.state.audio_format)

    async def _drop_utterance(
        self, conn: Connection, effect: s.DropUtterance, frame: bytes | None
    ) -> None:
        conn.drop_utterance()
        if self._tracing is not None:
            self._drop_turn_spans(self._tracing, conn)

    def _drop_turn_spans(self, tracing: Tracing, conn: Connection) -> None:
        """A recording's spans, ended unsubmitted (dropped, or a new one begun)."""
        for name in (UPLOAD_SPAN, TURN_SPAN):
            span = tracing.take(conn.id, name)
            if span is not None:
                span.set_attribute("kalami.turn.outcome", "dropped")
                span.end()

    def _turn_span(self, conn: Connection, session_id: str) -> TraceSpan | None:
        """The submitted turn's span (its upload's ended); None: tracing is off."""
        tracing = self._tracing
        if tracing is None:
            return None
        upload = tracing.take(conn.id, UPLOAD_SPAN)
        if upload is not None:
            upload.end()
        turn = tracing.take(conn.id, TURN_SPAN)
        if turn is None:  # audio in one message: the turn begins now
            turn = tracing.start(
                TURN_SPAN,
                parent=tracing.owned(conn.id, SESSION_SPAN),
                attributes=_ids(conn.id, session_id),
            )
        return turn

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
        span = self._turn_span(conn, effect.session_id)
        if upload is not None:
            conn.turn = asyncio.create_task(
                self._run_turn(conn, upload.finish, effect.answers, span)
            )
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
                    span,
                )
            )
        if span is not None:
            conn.turn.add_done_callback(_ends_if_cancelled(span))

    async def _submit_encoded_audio(
        self, conn: Connection, effect: s.SubmitEncodedAudio, frame: bytes | None
    ) -> None:
        span = self._turn_span(conn, effect.session_id)
        conn.turn = asyncio.create_task(self._run_encoded_turn(conn, effect, span))
        if span is not None:
            conn.turn.add_done_callback(_ends_if_cancelled(span))

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

    async def _run_encoded_turn(
        self, conn: Connection, effect: s.SubmitEncodedAudio, span: TraceSpan | None
    ) -> None:
        audio = effect.audio
        if len(audio) > self._max_audio_bytes:
            await self._finish_turn(
                conn,
                "too_large",
                0.0,
                s.TurnFailed(
                    session_errors.audio_message_too_large(self._max_audio_bytes), effect.answers
                ),
                span,
            )
            return
        utterance = Utterance((audio,), effect.audio_format)
        await self._run_turn(
            conn,
            lambda: self._backend.submit_utterance(conn.token, effect.session_id, utterance),
            effect.answers,
            span,
        )

    async def _run_turn(
        self,
        conn: Connection,
        call: Callable[[], Awaitable[TurnReply]],
        answers: p.ClientMessageType,
        span: TraceSpan | None = None,
    ) -> None:
        """Run a turn to its outcome; ``answers``: the message that asked for it (its error
        answers that message); ``span``: the turn's (None: not traced)."""
        started = self._clock.monotonic()
        event: s.TurnSucceeded | s.TurnFailed
        try:
            reply = await self._wait(call, span)
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
        await self._finish_turn(conn, outcome, self._clock.monotonic() - started, event, span)

    async def _wait(
        self, call: Callable[[], Awaitable[TurnReply]], span: TraceSpan | None
    ) -> TurnReply:
        """The backend's answer, within the deadline; traced, as the turn's ``turn.backend``
        span, current while the call runs (so that the call carries its traceparent)."""
        tracing = self._tracing
        if tracing is None or span is None:
            return await self._calls.on_time(call())
        waiting = tracing.start(BACKEND_SPAN, parent=span)
        try:
            with tracing.current(waiting):
                return await self._calls.on_time(call())
        except BaseException as exc:
            waiting.fail(type(exc).__name__)
            if not isinstance(exc, BackendError):  # cancelled: end_session, a cancel, a drain
                _cancelled(span)
            raise
        finally:
            waiting.end()

    async def _finish_turn(
        self,
        conn: Connection,
        outcome: str,
        seconds: float,
        event: s.TurnSucceeded | s.TurnFailed,
        span: TraceSpan | None = None,
    ) -> None:
        self._metrics.turn_finished(outcome, seconds)
        if conn.turn is asyncio.current_task():
            conn.turn = None
        tracing = self._tracing
        if tracing is None or span is None:
            await self._deliver(conn, event)
            return
        span.set_attribute("kalami.turn.outcome", outcome)
        if outcome != "ok":
            span.fail(outcome)
        delivery = tracing.start(REPLY_SPAN, parent=span)
        try:
            await self._deliver(conn, event)
        finally:
            delivery.end()
            span.end()

    async def _deliver(self, conn: Connection, event: s.TurnSucceeded | s.TurnFailed) -> None:
        """The turn's outcome to its connection, or to the parking store if it went."""
        if conn.stage in RUNS_ON:
            self._connections.turn_over(conn)
            await self._parked.keep_outcome(conn, event)
            return
        await self.apply(conn, event)
        await self._expiry.after_turn(conn)


def _cancelled(span: TraceSpan) -> None:
    """A turn's span, ended as cancelled (a failure: the learner got no reply)."""
    span.set_attribute("kalami.turn.outcome", "cancelled")
    span.fail("cancelled")
    span.end()


def _ends_if_cancelled(span: TraceSpan) -> Callable[[asyncio.Task[None]], None]:
    """A turn task's done callback: a turn cancelled before its first step never runs its
    code, so its span is ended here (one that ran has ended its own: this changes nothing)."""

    def done(task: asyncio.Task[None]) -> None:
        if task.cancelled():
            _cancelled(span)

    return done


def _ids(connection_id: str, session_id: str | None) -> dict[str, str | int | bool]:
    """A turn span's attributes."""
    ids: dict[str, str | int | bool] = {"kalami.connection_id": connection_id}
    if session_id is not None:
        ids["kalami.session_id"] = session_id
    return ids
