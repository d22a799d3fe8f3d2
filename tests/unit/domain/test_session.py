"""The voice-session state machine: every message in every phase."""

from __future__ import annotations

import msgspec
import pytest

from kalami_gateway.domain import protocol as p
from kalami_gateway.domain import session as s

LIMITS = s.Limits(max_audio_bytes=100)
IDLE = s.IDLE
ACTIVE = s.SessionState(s.Phase.ACTIVE, "s1", "prof", "travel")
RECORDING = msgspec.structs.replace(ACTIVE, phase=s.Phase.RECORDING, audio_format="wav")
RECORDING_WITH_AUDIO = msgspec.structs.replace(RECORDING, buffered_bytes=60)
PROCESSING = msgspec.structs.replace(ACTIVE, phase=s.Phase.PROCESSING)
ALL_STATES = {
    "idle": IDLE,
    "active": ACTIVE,
    "recording": RECORDING_WITH_AUDIO,
    "processing": PROCESSING,
}

START = p.StartSession(p.StartSessionPayload("prof", "travel"))
START_REC = p.StartRecording(p.StartRecordingPayload("wav"))
STOP_REC = p.StopRecording()
AUDIO_MSG = p.AudioMessage(p.AudioPayload(b"\0\0\0", "mp3"))
END = p.EndSession()
FRAME = s.AudioFrame(10)
FAILURE = p.Problem("no", p.ErrorCode.BACKEND_TIMEOUT)


def sends(decision: s.Decision) -> list[p.Outbound]:
    return [e.message for e in decision.effects if isinstance(e, s.Send)]


def error_text(decision: s.Decision) -> str:
    [message] = sends(decision)
    assert isinstance(message, p.Error)
    return message.payload.message


# Which (phase, event) pairs are legal; everything else must be refused with an error.
LEGAL = {
    ("idle", "start_session"),
    ("active", "start_recording"),
    ("active", "audio"),
    ("recording", "audio_frame"),
    ("recording", "stop_recording"),
    ("active", "end_session"),
    ("recording", "end_session"),
    ("processing", "end_session"),
}
EVENTS: dict[str, s.Event] = {
    "start_session": START,
    "start_recording": START_REC,
    "stop_recording": STOP_REC,
    "audio": AUDIO_MSG,
    "audio_frame": FRAME,
    "end_session": END,
}


ILLEGAL = [
    (phase, event) for phase in ALL_STATES for event in EVENTS if (phase, event) not in LEGAL
]


def test_the_illegal_table_covers_every_other_pair() -> None:
    assert len(ILLEGAL) + len(LEGAL) == len(ALL_STATES) * len(EVENTS)


@pytest.mark.parametrize(("phase", "event"), ILLEGAL)
def test_illegal_messages_are_refused_with_an_error_and_change_nothing(
    phase: str, event: str
) -> None:
    state = ALL_STATES[phase]
    decision = s.decide(state, EVENTS[event], LIMITS)
    assert decision.state == state
    text = error_text(decision)
    assert len(text) > 20
    assert text.endswith(".") or text.endswith(")")


@pytest.mark.parametrize("state", list(ALL_STATES.values()), ids=list(ALL_STATES))
def test_ping_and_heartbeat_are_answered_in_every_state(state: s.SessionState) -> None:
    pong = s.decide(state, p.Ping(), LIMITS)
    beat = s.decide(state, p.Heartbeat(), LIMITS)
    assert (pong.state, sends(pong)) == (state, [p.Pong()])
    assert (beat.state, sends(beat)) == (state, [p.HeartbeatReply()])


def test_start_session_asks_the_backend_then_goes_active_on_success() -> None:
    asked = s.decide(IDLE, START, LIMITS)
    assert asked.state == IDLE
    assert asked.effects == (s.CreateSession("prof", "travel"),)
    created = s.decide(IDLE, s.SessionCreated("s9", "prof", "travel"), LIMITS)
    assert created.state.phase is s.Phase.ACTIVE
    assert created.state.session_id == "s9"
    assert sends(created) == [p.SessionStarted(p.SessionStartedPayload("s9", "prof", "travel"))]


def test_a_failed_session_start_stays_idle_with_an_error() -> None:
    problem = p.Problem("Could not start the session.", p.ErrorCode.BACKEND_TIMEOUT)
    failed = s.decide(IDLE, s.SessionCreateFailed(problem), LIMITS)
    assert failed.state == IDLE
    assert error_text(failed) == "Could not start the session."


def test_start_recording_starts_a_fresh_utterance_in_the_asked_format() -> None:
    decision = s.decide(ACTIVE, START_REC, LIMITS)
    assert decision.state.phase is s.Phase.RECORDING
    assert decision.state.audio_format == "wav"
    assert decision.state.buffered_bytes == 0
    assert decision.effects[0] == s.StartUtterance()
    assert sends(decision) == [p.RecordingStarted(p.RecordingStartedPayload("wav"))]


def test_audio_frames_accumulate_and_are_acknowledged() -> None:
    first = s.decide(RECORDING, s.AudioFrame(30), LIMITS)
    second = s.decide(first.state, s.AudioFrame(70), LIMITS)
    assert second.state.buffered_bytes == 100
    assert s.AppendAudio() in second.effects
    assert sends(second) == [p.AudioReceived(p.AudioReceivedPayload(70, 100))]


def test_an_utterance_past_the_limit_is_dropped_and_recording_stops() -> None:
    decision = s.decide(RECORDING_WITH_AUDIO, s.AudioFrame(41), LIMITS)
    assert decision.state.phase is s.Phase.ACTIVE
    assert decision.state.buffered_bytes == 0
    assert s.DropUtterance() in decision.effects
    assert s.AppendAudio() not in decision.effects
    assert "100-byte limit" in error_text(decision)


def test_stop_recording_submits_the_utterance_and_says_processing() -> None:
    decision = s.decide(RECORDING_WITH_AUDIO, STOP_REC, LIMITS)
    assert decision.state.phase is s.Phase.PROCESSING
    assert decision.effects == (
        s.Send(p.Processing(p.ProcessingPayload("transcribing"))),
        s.SubmitUtterance("s1", "wav"),
    )


def test_stop_recording_with_nothing_recorded_is_an_error_back_to_active() -> None:
    decision = s.decide(RECORDING, STOP_REC, LIMITS)
    assert decision.state.phase is s.Phase.ACTIVE
    assert "empty" in error_text(decision)
    assert not any(isinstance(e, s.SubmitUtterance) for e in decision.effects)


def test_a_base64_audio_message_runs_the_same_turn() -> None:
    decision = s.decide(ACTIVE, AUDIO_MSG, LIMITS)
    assert decision.state.phase is s.Phase.PROCESSING
    assert decision.effects[-1] == s.SubmitEncodedAudio("s1", "mp3", b"\0\0\0")


def test_an_empty_base64_audio_message_is_refused() -> None:
    decision = s.decide(ACTIVE, p.AudioMessage(p.AudioPayload(b"", "mp3")), LIMITS)
    assert decision.state == ACTIVE
    assert "empty" in error_text(decision)


def test_a_successful_turn_relays_transcription_response_and_audio_in_order() -> None:
    fix: p.GrammarCorrection = {"original": "a", "corrected": "b", "explanation": "c"}
    done = s.decide(PROCESSING, s.TurnSucceeded("hi", "hello", [fix], ["w"], "QUJD"), LIMITS)
    assert done.state.phase is s.Phase.ACTIVE
    assert sends(done) == [
        p.Transcription(p.TranscriptionPayload("hi")),
        p.Response(p.ResponsePayload("hello", [fix], ["w"])),
        p.AudioReply(p.AudioReplyPayload("QUJD")),
    ]


def test_a_turn_without_audio_sends_no_audio_message() -> None:
    done = s.decide(PROCESSING, s.TurnSucceeded("hi", "hello", [], [], None), LIMITS)
    assert [type(m) for m in sends(done)] == [p.Transcription, p.Response]


def test_a_failed_turn_is_one_error_and_back_to_active() -> None:
    problem = p.Problem("Could not process.", p.ErrorCode.BACKEND_UNAVAILABLE)
    failed = s.decide(PROCESSING, s.TurnFailed(problem, "stop_recording"), LIMITS)
    assert failed.state.phase is s.Phase.ACTIVE
    assert error_text(failed) == "Could not process."


@pytest.mark.parametrize("state", [IDLE, ACTIVE, RECORDING], ids=["idle", "active", "recording"])
def test_late_turn_outcomes_outside_processing_are_ignored(state: s.SessionState) -> None:
    for event in (s.TurnFailed(FAILURE), s.TurnSucceeded("a", "b", [], [], None)):
        assert s.decide(state, event, LIMITS) == s.Decision(state)


@pytest.mark.parametrize(
    ("state", "cleanup"),
    [
        (ACTIVE, ()),
        (RECORDING_WITH_AUDIO, (s.DropUtterance(),)),
        (PROCESSING, (s.CancelTurn(),)),
    ],
    ids=["active", "recording", "processing"],
)
def test_end_session_cleans_up_and_goes_idle(
    state: s.SessionState, cleanup: tuple[s.Effect, ...]
) -> None:
    decision = s.decide(state, END, LIMITS)
    assert decision.state == IDLE
    assert decision.effects == (*cleanup, s.EndSession("s1"))


@pytest.mark.parametrize(
    ("state", "effects"),
    [
        (IDLE, ()),
        (ACTIVE, (s.EndSession("s1"),)),
        (RECORDING_WITH_AUDIO, (s.DropUtterance(), s.EndSession("s1"))),
        (PROCESSING, (s.CancelTurn(), s.EndSession("s1"))),
    ],
    ids=["idle", "active", "recording", "processing"],
)
def test_disconnect_ends_an_open_session(
    state: s.SessionState, effects: tuple[s.Effect, ...]
) -> None:
    assert s.on_disconnect(state) == effects


# --- a streamed upload that breaks mid-recording ------------------------------------------

UPLOAD_BROKE = s.UploadFailed(
    p.Problem(
        "Could not send the utterance: the backend is unavailable.",
        p.ErrorCode.BACKEND_UNAVAILABLE,
    )
)


def test_a_broken_upload_gives_one_error_and_drops_the_utterance() -> None:
    decision = s.decide(RECORDING_WITH_AUDIO, UPLOAD_BROKE, LIMITS)
    assert decision.state.phase is s.Phase.RECORDING  # until the client's stop_recording
    assert decision.state.upload_failed
    assert decision.effects[0] == s.DropUtterance()
    assert error_text(decision) == UPLOAD_BROKE.problem.message
    again = s.decide(decision.state, UPLOAD_BROKE, LIMITS)
    assert (again.state, again.effects) == (decision.state, ())  # one error, not two


def test_after_a_broken_upload_frames_are_acknowledged_and_ignored_even_past_the_cap() -> None:
    broken = s.decide(RECORDING_WITH_AUDIO, UPLOAD_BROKE, LIMITS).state
    for _ in range(20):  # 200 bytes past a 100-byte cap: no error, nothing appended
        decision = s.decide(broken, FRAME, LIMITS)
        assert [type(e) for e in decision.effects] == [s.Send]
        assert isinstance(sends(decision)[0], p.AudioReceived)
        broken = decision.state
    assert broken.phase is s.Phase.RECORDING


def test_the_stop_after_a_broken_upload_answers_nothing_and_the_next_recording_works() -> None:
    broken = s.decide(RECORDING_WITH_AUDIO, UPLOAD_BROKE, LIMITS).state
    stopped = s.decide(broken, STOP_REC, LIMITS)
    assert stopped.effects == ()
    assert stopped.state == msgspec.structs.replace(ACTIVE, audio_format="wav")
    fresh = s.decide(stopped.state, START_REC, LIMITS).state
    assert not fresh.upload_failed
    appended = s.decide(fresh, FRAME, LIMITS)
    assert s.AppendAudio() in appended.effects


@pytest.mark.parametrize("state", [IDLE, ACTIVE, PROCESSING], ids=["idle", "active", "processing"])
def test_an_upload_failure_outside_recording_changes_nothing(state: s.SessionState) -> None:
    decision = s.decide(state, UPLOAD_BROKE, LIMITS)
    assert (decision.state, decision.effects) == (state, ())


@pytest.mark.parametrize("state", list(ALL_STATES.values()), ids=list(ALL_STATES))
def test_a_heartbeat_answer_is_not_answered_in_any_state(state: s.SessionState) -> None:
    answer = s.decide(state, p.Heartbeat(p.HeartbeatPayload(pong=True)), LIMITS)
    assert (answer.state, answer.effects) == (state, ())


APP_AUDIO = p.AudioMessage(p.AudioPayload(b"\0\0\0", "m4a", "rest-9"))
TURN_OK = s.TurnSucceeded("heard", "reply", [], [], None)


@pytest.mark.parametrize("own", [IDLE, ACTIVE], ids=["idle", "active"])
def test_the_apps_audio_is_a_turn_on_the_named_session_and_leaves_its_own(
    own: s.SessionState,
) -> None:
    asked = s.decide(own, APP_AUDIO, LIMITS)
    assert asked.state.phase is s.Phase.PROCESSING
    assert asked.state.session_id == own.session_id
    assert s.SubmitEncodedAudio("rest-9", "m4a", b"\0\0\0") in asked.effects
    for outcome in (TURN_OK, s.TurnFailed(FAILURE, "audio"), s.TurnRelayed()):
        after = s.decide(asked.state, outcome, LIMITS).state
        assert (after.phase, after.session_id) == (own.phase, own.session_id)


def test_nothing_is_ended_after_a_turn_on_a_named_session() -> None:
    busy = s.decide(IDLE, APP_AUDIO, LIMITS).state
    assert not any(isinstance(e, s.EndSession) for e in s.on_disconnect(busy))
    assert s.CancelTurn() in s.on_disconnect(busy)
    assert "No session is open" in error_text(s.decide(busy, END, LIMITS))
    assert "still being processed" in error_text(s.decide(busy, START, LIMITS))
    assert "still being processed" in error_text(s.decide(busy, APP_AUDIO, LIMITS))


def test_audio_without_a_session_says_how_to_name_one() -> None:
    assert "session_id" in error_text(s.decide(IDLE, AUDIO_MSG, LIMITS))


# --- error codes: what each refusal is, and which message it answers ----------------------


def error_of(decision: s.Decision) -> p.ErrorPayload:
    [message] = sends(decision)
    assert isinstance(message, p.Error)
    return message.payload


# The refusals that only have to wait for the turn being processed; every other is wrong_state.
TURN_WAITS = {
    ("processing", "start_recording"),
    ("processing", "stop_recording"),
    ("processing", "audio"),
    ("processing", "audio_frame"),
}


@pytest.mark.parametrize(("phase", "event"), ILLEGAL)
def test_illegal_messages_carry_their_code_and_the_message_they_answer(
    phase: str, event: str
) -> None:
    error = error_of(s.decide(ALL_STATES[phase], EVENTS[event], LIMITS))
    assert error.code == ("turn_in_progress" if (phase, event) in TURN_WAITS else "wrong_state")
    # A binary frame has no type: its error answers no message.
    assert error.in_reply_to == (None if event == "audio_frame" else event)
    assert (error.status, error.reason) == (None, None)


def test_a_turn_on_a_named_session_makes_a_start_wait() -> None:
    busy = s.decide(IDLE, APP_AUDIO, LIMITS).state
    for event, answers in ((START, "start_session"), (APP_AUDIO, "audio")):
        error = error_of(s.decide(busy, event, LIMITS))
        assert (error.code, error.in_reply_to) == ("turn_in_progress", answers)
    ended = error_of(s.decide(busy, END, LIMITS))
    assert (ended.code, ended.in_reply_to) == ("wrong_state", "end_session")


def test_an_utterance_past_the_limit_is_audio_too_large_answering_no_message() -> None:
    error = error_of(s.decide(RECORDING_WITH_AUDIO, s.AudioFrame(41), LIMITS))
    assert (error.code, error.in_reply_to) == ("audio_too_large", None)


def test_empty_utterances_are_empty_audio_answering_their_message() -> None:
    stopped = error_of(s.decide(RECORDING, STOP_REC, LIMITS))
    assert (stopped.code, stopped.in_reply_to) == ("empty_audio", "stop_recording")
    empty = p.AudioMessage(p.AudioPayload(b"", "mp3"))
    sent = error_of(s.decide(ACTIVE, empty, LIMITS))
    assert (sent.code, sent.in_reply_to) == ("empty_audio", "audio")


def test_a_failed_start_answers_start_session_with_the_backends_code_and_status() -> None:
    problem = p.Problem("Could not start the session.", p.ErrorCode.BACKEND_REJECTED, status=404)
    error = error_of(s.decide(IDLE, s.SessionCreateFailed(problem), LIMITS))
    assert error == p.ErrorPayload(
        "Could not start the session.", "backend_rejected", "start_session", 404
    )


@pytest.mark.parametrize("answers", ["stop_recording", "audio", None])
def test_a_failed_turn_answers_the_message_that_asked_for_it(
    answers: p.ClientMessageType | None,
) -> None:
    failed = s.decide(PROCESSING, s.TurnFailed(FAILURE, answers), LIMITS)
    assert error_of(failed) == p.ErrorPayload("no", "backend_timeout", answers)


def test_a_broken_upload_answers_no_message() -> None:
    error = error_of(s.decide(RECORDING_WITH_AUDIO, UPLOAD_BROKE, LIMITS))
    assert (error.code, error.in_reply_to) == ("backend_unavailable", None)


def test_each_kind_of_turn_names_the_message_its_error_answers() -> None:
    assert s.SubmitUtterance("s1", "wav").answers == "stop_recording"
    assert s.SubmitEncodedAudio("s1", "mp3", b"\0").answers == "audio"
