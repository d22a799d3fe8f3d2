"""The closed list of ``error`` codes: each one documented in docs/protocol.md's §4 and no code
documented that the gateway lacks; likewise the reasons of refused resumes and refreshes, and
the close codes (§4 lists §1's); and the wire shape of an ``error``, which only adds fields
beside the ``message`` clients always read."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import get_args

import msgspec
import pytest

from kalami_gateway.domain import parking as pk
from kalami_gateway.domain import protocol as p
from kalami_gateway.domain.auth import CloseCode, RefreshRefusal

PROTOCOL_MD = Path(__file__).resolve().parents[3] / "docs" / "protocol.md"
# The one close code the domain does not name: the /ws handler's, when the gateway fails.
INTERNAL_ERROR = 1011


def section(number: int) -> str:
    text = PROTOCOL_MD.read_text()
    start = re.search(rf"^## {number}\. ", text, re.MULTILINE)
    assert start is not None, f"docs/protocol.md has no section {number}"
    end = re.search(r"^## ", text[start.end() :], re.MULTILINE)
    return text[start.start() : start.end() + end.start() if end else len(text)]


def tables(text: str) -> dict[str, list[list[str]]]:
    """Every table of ``text`` by its first header cell: its rows' cells (separator and
    header left out)."""
    found: dict[str, list[list[str]]] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("|"):
            i += 1
            continue
        block = []
        while i < len(lines) and lines[i].startswith("|"):
            block.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
            i += 1
        found[block[0][0]] = block[2:]
    return found


def unquoted(cell: str) -> str:
    assert re.fullmatch(r"`[a-z_]+`", cell), cell
    return cell.strip("`")


def test_every_code_is_documented_and_nothing_else_is() -> None:
    rows = tables(section(4))["`code`"]
    documented = [unquoted(row[0]) for row in rows]
    assert len(documented) == len(set(documented))
    assert set(documented) == {code.value for code in p.ErrorCode}
    assert all(len(row) == 3 and row[1] and row[2] for row in rows)  # when, and what to do


def test_every_refusal_reason_is_documented_and_nothing_else_is() -> None:
    rows = tables(section(4))["`reason`"]
    documented = {(unquoted(row[1]), unquoted(row[0])) for row in rows}
    assert len(documented) == len(rows)
    resume = {("resume_refused", reason) for reason in pk.REFUSAL_REASONS.values()}
    refresh = {("refresh_refused", reason) for reason in get_args(RefreshRefusal)}
    assert documented == resume | refresh


def test_every_resume_refusal_has_its_own_reason() -> None:
    assert set(pk.REFUSAL_REASONS) == set(pk.Refusal)
    assert len(set(pk.REFUSAL_REASONS.values())) == len(pk.Refusal)


def close_codes(number: int) -> set[int]:
    [rows] = [rows for head, rows in tables(section(number)).items() if head == "Close code"]
    return {int(row[0]) for row in rows}


def test_the_errors_section_lists_the_close_codes_of_connecting() -> None:
    assert close_codes(4) == close_codes(1)
    assert {int(code) for code in CloseCode} | {INTERNAL_ERROR} <= close_codes(4)


def test_the_close_reasons_of_the_errors_section_are_those_of_connecting() -> None:
    def reasons(number: int) -> dict[str, str]:
        [rows] = [rows for head, rows in tables(section(number)).items() if head == "Close code"]
        return {row[0]: row[1] for row in rows}

    assert reasons(4) == reasons(1)


def test_an_error_is_the_message_it_always_was_plus_its_code() -> None:
    problem = p.Problem("Not recording.", p.ErrorCode.WRONG_STATE)
    frame = p.encode_server_message(p.error(problem, "stop_recording"))
    assert frame == (
        '{"type":"error","payload":{"message":"Not recording.","code":"wrong_state",'
        '"inReplyTo":"stop_recording"}}'
    )


def test_fields_with_nothing_to_say_are_left_out() -> None:
    bare = json.loads(p.encode_server_message(p.error(p.Problem("x", p.ErrorCode.TURN_LOST))))
    assert bare == {"type": "error", "payload": {"message": "x", "code": "turn_lost"}}
    rejected = p.Problem("no", p.ErrorCode.BACKEND_REJECTED, status=404)
    assert json.loads(p.encode_server_message(p.error(rejected, "audio")))["payload"] == {
        "message": "no",
        "code": "backend_rejected",
        "inReplyTo": "audio",
        "status": 404,
    }
    refused = pk.refusal_problem(pk.Refusal.USED)
    assert json.loads(p.encode_server_message(p.error(refused)))["payload"] == {
        "message": pk.refusal_message(pk.Refusal.USED),
        "code": "resume_refused",
        "reason": "used",
    }


def test_a_kept_error_reads_back_as_it_was_sent() -> None:
    sent = p.error(p.Problem("lost", p.ErrorCode.BACKEND_REJECTED, status=400), "stop_recording")
    assert p.decode_kept(p.encode_kept(sent)) == sent


@pytest.mark.parametrize(
    "kept",
    [
        b'{"type":"error","payload":{"message":"kept before codes"}}',
        b'{"type":"error","payload":{"message":"m","code":"a_newer_code","inReplyTo":"later"}}',
    ],
    ids=["before codes", "a newer gateway's code"],
)
def test_a_kept_error_of_another_version_is_still_relayed_as_it_was(kept: bytes) -> None:
    message = p.decode_kept(kept)
    assert isinstance(message, p.Error)
    assert msgspec.json.decode(p.encode_kept(message)) == msgspec.json.decode(kept)


def test_the_message_types_are_the_wire_tags() -> None:
    tags = {
        msgspec.inspect.type_info(cls).tag  # type: ignore[attr-defined]
        for cls in get_args(p.ClientMessage)
    }
    assert set(p.CLIENT_MESSAGE_TYPES) == tags
    assert len(p.CLIENT_MESSAGE_TYPES) == len(tags)


@pytest.mark.parametrize(
    ("frame", "code", "in_reply_to"),
    [
        ("{nope", "malformed", None),
        ("[1, 2]", "malformed", None),
        ('{"payload": {}}', "malformed", None),
        ('{"type": 7}', "malformed", None),
        ('{"type": "dance"}', "unknown_type", None),
        ('{"type": "start_session"}', "invalid_payload", "start_session"),
        (
            '{"type": "start_recording", "payload": {"format": "flac"}}',
            "invalid_payload",
            "start_recording",
        ),
        ('{"type": "audio", "payload": {"audio_base64": "!!"}}', "invalid_payload", "audio"),
        ('{"type": "ping", "payload": "x"}', "invalid_payload", "ping"),
        ('{"type": "refresh", "payload": []}', "invalid_payload", "refresh"),
    ],
)
def test_a_frame_that_is_not_a_message_says_which_way(
    frame: str, code: str, in_reply_to: str | None
) -> None:
    result = p.decode_client_message(frame)
    assert isinstance(result, p.ProtocolError)
    assert (result.code, result.in_reply_to) == (code, in_reply_to)
    assert result.problem == p.Problem(result.message, p.ErrorCode(code))
