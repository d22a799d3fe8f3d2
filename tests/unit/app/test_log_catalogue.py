"""docs/operations.md's table of log events is the list of events the code emits: each with
its level and its fields, read from the source (every logging call with a constant event)."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[3]
SOURCE: Final = ROOT / "src" / "kalami_gateway"
# A logging call's method and the level its line carries.
LEVELS: Final = {
    "debug": "debug",
    "info": "info",
    "warning": "warning",
    "error": "error",
    "exception": "error",
    "critical": "critical",
}
# BackendCalls.failed(event, connection_id, exc) logs ``event`` at warning with these.
FAILED_FIELDS: Final = {"connection_id", "kind", "status"}


def _logger_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def emitted() -> dict[str, tuple[set[str], set[str]]]:
    """Each event the source logs: its levels and its fields."""
    events: dict[str, tuple[set[str], set[str]]] = defaultdict(lambda: (set(), set()))
    for path in SOURCE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            first = node.args[0] if node.args else None
            event = first.value if isinstance(first, ast.Constant) else None
            if node.func.attr == "failed" and _logger_name(node.func.value) == "_calls":
                assert isinstance(event, str), f"{path}:{node.lineno}: an event by name"
                events[event][0].add("warning")
                events[event][1].update(FAILED_FIELDS)
                continue
            owner = _logger_name(node.func.value)
            if node.func.attr not in LEVELS or owner not in {"log", "_log"}:
                continue  # not ours (uvicorn's self.logger, say)
            if path.name == "backend_calls.py" and isinstance(first, ast.Name):
                continue  # BackendCalls.failed's own line: its callers' events, above
            assert isinstance(event, str), f"{path}:{node.lineno}: log a constant event name"
            levels, fields = events[event]
            levels.add(LEVELS[node.func.attr])
            for keyword in node.keywords:
                if keyword.arg == "extra":
                    assert isinstance(keyword.value, ast.Dict), f"{path}:{node.lineno}"
                    fields.update(
                        str(k.value) for k in keyword.value.keys if isinstance(k, ast.Constant)
                    )
                elif keyword.arg not in ("exc_info", "stack_info"):
                    assert keyword.arg is not None, f"{path}:{node.lineno}"
                    fields.add(keyword.arg)
    return dict(events)


def documented() -> dict[str, tuple[set[str], set[str]]]:
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    section = text.split("### The log events\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[set[str], set[str]]] = {}
    for line in section.splitlines():
        match = re.match(r"^\| `([a-z_]+)` \| ([a-z]+) \| ([^|]*) \|", line)
        if match:
            event, level, fields = match.groups()
            assert event not in rows, f"{event} is in the table twice"
            rows[event] = ({level}, set(re.findall(r"`([a-z_]+)`", fields)))
    return rows


def test_every_event_the_code_emits_is_in_the_table_as_emitted() -> None:
    code = emitted()
    docs = documented()
    assert sorted(code) == sorted(docs)
    for event, (levels, fields) in code.items():
        assert docs[event] == (levels, fields), event


def test_the_scan_sees_what_it_must() -> None:
    code = emitted()
    assert code["http_request"][1] == {"duration_ms", "method", "path", "status"}
    assert code["voice_turn_failed"] == ({"warning"}, FAILED_FIELDS)
    assert code["ws_handler_failed"][0] == {"error"}  # log.exception
