"""Every place the service sends an ``error``, on fakes: the code it picks, the client message
it answers (``inReplyTo``), the backend's status or the refusal's reason, and the message
worded as it always was."""

from __future__ import annotations

import base64
import json

import pytest

from kalami_gateway.application import Connection, GatewayService, ServiceLimits
from kalami_gateway.application.backend_calls import BACKEND_ERROR_CODES, backend_problem
from kalami_gateway.domain import protocol as p
from kalami_gateway.domain.ports import BackendError, BackendErrorKind
from tests.unit.application.gateway_on_fakes import gateway_on_fakes
from tests.unit.fakes import FakeBackend, FakeChannel, FakeClock, FakeDecoder, FakeMetrics

START = json.dumps({"type": "start_session", "payload": {"profileId": "prof"}})
START_REC = json.dumps({"type": "start_recording", "payload": {"format": "wav"}})
STOP_REC = '{"type":"stop_recording"}'

# Each way a backend call fails, and the code and status its error carries.
FAILURES = [
    (
        BackendError(BackendErrorKind.UNREACHABLE, "the backend is unavailable."),
        "backend_unavailable",
        None,
    ),
    (BackendError(BackendErrorKind.TIMEOUT, "the backend timed out."), "backend_timeout", None),
    (
        BackendError(
            BackendErrorKind.REJECTED, "the backend answered 404 (Session not found).", 404
        ),
        "backend_rejected",
        404,
    ),
    (
        BackendError(BackendErrorKind.INVALID_REPLY, "the backend's reply could not be read.", 200),
        "backend_invalid_reply",
        None,
    ),
]
FAILURE_IDS = ["unreachable", "timeout", "rejected", "invalid_reply"]


class World:
    def __init__(self, *, stream_uploads: bool = False, session_start_rate: int = 0) -> None:
        self.clock = FakeClock()
        self.decoder = FakeDecoder()
        self.backend = FakeBackend()
        self.service: GatewayService = gateway_on_fakes(
            ServiceLimits(
                max_message_bytes=4096,
                max_audio_bytes=1000,
                stream_uploads=stream_uploads,
                session_start_rate=session_start_rate,
            ),
            backend=self.backend,
            clock=self.clock,
            decoder=self.decoder,
            metrics=FakeMetrics(),
        )

    async def connect(self, user: str = "alice") -> tuple[Connection, FakeChannel]:
        token = self.decoder.issue(f"tok-{user}", sub=user, exp=self.clock.now() + 3600)
        channel = FakeChannel()
        conn = await self.service.open(channel, token)
        assert conn is not None
        return conn, channel

    async def recording(self) -> tuple[Connection, FakeChannel]:
        conn, channel = await self.connect()
        await self.service.handle_text(conn, START)
        await self.service.handle_text(conn, START_REC)
        return conn, channel


def last_error(channel: FakeChannel) -> p.ErrorPayload:
    message = channel.sent[-1]
    assert isinstance(message, p.Error)
    return message.payload


async def turn_over(conn: Connection) -> None:
    if conn.turn is not None:
        await conn.turn


def app_audio(session_id: str, audio: bytes) -> str:
    payload = {"audio_base64": base64.b64encode(audio).decode(), "session_id": session_id}
    return json.dumps({"type": "audio", "payload": payload})


@pytest.mark.parametrize(
    ("frame", "code", "in_reply_to"),
    [
        ("{nope", "malformed", None),
        ('"ping"', "malformed", None),
        ('{"type":"dance"}', "unknown_type", None),
        ('{"type":"start_session","payload":{"profileId":5}}', "invalid_payload", "start_session"),
        ('{"type":"audio","payload":{"audio_base64":"not base64!"}}', "invalid_payload", "audio"),
        (STOP_REC, "wrong_state", "stop_recording"),
        ('{"type":"end_session"}', "wrong_state", "end_session"),
    ],
)
async def test_a_frame_refused_says_why_and_what_it_answers(
    frame: str, code: str, in_reply_to: str | None
) -> None:
    world = World()
    conn, channel = await world.connect()
    await world.service.handle_text(conn, frame)
    error = last_error(channel)
    assert (error.code, error.in_reply_to) == (code, in_reply_to)
    assert conn.closed is False


async def test_a_binary_frame_outside_a_recording_answers_no_message() -> None:
    world = World()
    conn, channel = await world.connect()
    await world.service.handle_binary(conn, b"audio")
    error = last_error(channel)
    assert (error.code, error.in_reply_to) == ("wrong_state", None)


@pytest.mark.parametrize(("failure", "code", "status"), FAILURES, ids=FAILURE_IDS)
async def test_a_failed_session_start_carries_the_backends_code(
    failure: BackendError, code: str, status: int | None
) -> None:
    world = World()
    conn, channel = await world.connect()
    world.backend.fail_next = failure
    await world.service.handle_text(conn, START)
    assert last_error(channel) == p.ErrorPayload(
        f"Could not start the session: {failure.detail}", code, "start_session", status
    )


@pytest.mark.parametrize(("failure", "code", "status"), FAILURES, ids=FAILURE_IDS)
async def test_a_failed_turn_carries_the_backends_code_and_answers_stop_recording(
    failure: BackendError, code: str, status: int | None
) -> None:
    world = World()
    conn, channel = await world.recording()
    await world.service.handle_binary(conn, b"speech")
    world.backend.fail_next = failure
    await world.service.handle_text(conn, STOP_REC)
    await turn_over(conn)
    assert last_error(channel) == p.ErrorPayload(
        f"Could not process the utterance: {failure.detail} Please try again.",
        code,
        "stop_recording",
        status,
    )


async def test_the_backends_refusal_of_a_named_session_answers_audio_with_its_status() -> None:
    world = World()
    conn, channel = await world.connect()
    world.backend.fail_next = BackendError(
        BackendErrorKind.REJECTED, "the backend answered 400 (Session has ended).", 400
    )
    await world.service.handle_text(conn, app_audio("rest-1", b"speech"))
    await turn_over(conn)
    error = last_error(channel)
    assert (error.code, error.in_reply_to, error.status) == ("backend_rejected", "audio", 400)


async def test_an_audio_message_over_the_limit_is_audio_too_large() -> None:
    world = World()
    conn, channel = await world.connect()
    await world.service.handle_text(conn, app_audio("rest-1", b"x" * 1001))
    await turn_over(conn)
    assert last_error(channel) == p.ErrorPayload(
        "The utterance is larger than the 1000-byte limit.", "audio_too_large", "audio"
    )
    assert world.backend.utterances == []


async def test_a_session_start_past_the_budget_is_rate_limited() -> None:
    world = World(session_start_rate=1)
    conn, channel = await world.connect()
    await world.service.handle_text(conn, START)
    await world.service.handle_text(conn, '{"type":"end_session"}')
    await world.service.handle_text(conn, START)
    assert last_error(channel) == p.ErrorPayload(
        "Too many sessions started in the last minute; wait a few seconds, then send "
        "start_session again.",
        "rate_limited",
        "start_session",
    )


@pytest.mark.parametrize(("user", "reason"), [("mallory", "other_user"), (None, "invalid_token")])
async def test_a_refused_refresh_says_why(user: str | None, reason: str) -> None:
    world = World()
    conn, channel = await world.connect()
    token = (
        "not-a-token"
        if user is None
        else world.decoder.issue("theirs", sub=user, exp=world.clock.now() + 7200)
    )
    await world.service.handle_text(
        conn, json.dumps({"type": "refresh", "payload": {"token": token}})
    )
    error = last_error(channel)
    assert (error.code, error.in_reply_to, error.reason) == ("refresh_refused", "refresh", reason)


async def test_a_streamed_upload_that_breaks_answers_no_message() -> None:
    world = World(stream_uploads=True)
    conn, channel = await world.recording()
    world.backend.upload_fail_at = 1
    await world.service.handle_binary(conn, b"speech")
    [error] = [m.payload for m in channel.sent if isinstance(m, p.Error)]
    assert (error.code, error.in_reply_to) == ("backend_unavailable", None)
    assert error.message.startswith("Could not send the utterance to the backend:")


async def test_a_streamed_turn_that_fails_at_its_end_answers_stop_recording() -> None:
    world = World(stream_uploads=True)
    conn, channel = await world.recording()
    await world.service.handle_binary(conn, b"speech")
    world.backend.fail_next = BackendError(BackendErrorKind.TIMEOUT, "the backend timed out.")
    await world.service.handle_text(conn, STOP_REC)
    await turn_over(conn)
    error = last_error(channel)
    assert (error.code, error.in_reply_to) == ("backend_timeout", "stop_recording")


def test_every_way_a_backend_call_fails_has_its_code() -> None:
    assert set(BACKEND_ERROR_CODES) == set(BackendErrorKind)
    assert len(set(BACKEND_ERROR_CODES.values())) == len(BackendErrorKind)


def test_only_a_rejection_carries_the_backends_status() -> None:
    for kind in BackendErrorKind:
        problem = backend_problem(BackendError(kind, "d", 503), "m")
        assert problem.status == (503 if kind is BackendErrorKind.REJECTED else None)
        assert problem.message == "m"
