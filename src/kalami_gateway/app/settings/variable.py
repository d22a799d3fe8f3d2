"""One environment variable, as the settings table reads it, and one row of that table.

``Variable`` annotates a field of ``Settings``: the variable's name, the parser that makes
its text a value (the range included), its line of ``serve --help`` and, where the field's
default does not say it by itself, the default in words. ``Secret`` is JWT_SECRET's:
required, taken as written, never repeated in a message. ``Setting`` is a row of the table:
a field of ``Settings`` with its variable and its default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Variable(Generic[T]):
    """An environment variable: unset or blank, the field keeps its default."""

    name: str
    parse: Callable[[str], T]  # its text (stripped) to a value; ValueError says what it expected
    help: str  # its line in `serve --help`
    default_text: str | None = None  # the default in words, when the value does not say it
    on_terminal: T | None = None  # the default instead when stdout (the logs) is a tty
    shown: Callable[[str], str] = repr  # a bad value as the message repeats it
    from_file: bool = False  # a secret: NAME_FILE may name a file holding it instead

    def read(self, env: Mapping[str, str], default: T, problems: list[str]) -> T:
        """Its value in ``env``, else ``default``; a bad one is added to ``problems``."""
        raw = env.get(self.name)
        if raw is None or raw.strip() == "":
            return default
        try:
            return self.parse(raw.strip())
        except ValueError as exc:
            problems.append(f"{self.name}: {exc}, got {self.shown(raw)}")
            return default


@dataclass(frozen=True, slots=True)
class Secret:
    """JWT_SECRET: required and taken as written (not stripped). A missing one is answered
    with how to make one, a short one with its length: the secret itself is never repeated."""

    name: str
    help: str
    min_length: int
    setup_hint: str
    from_file: bool = True  # JWT_SECRET_FILE may name a file holding it instead

    @property
    def default_text(self) -> str | None:
        return None  # it has none: "required"

    @property
    def on_terminal(self) -> None:
        return None

    def read(self, env: Mapping[str, str], default: object, problems: list[str]) -> str:
        secret = env.get(self.name, "")
        if not secret:
            problems.append(f"{self.name} is not set: {self.setup_hint}")
        elif len(secret) < self.min_length:
            problems.append(
                f"{self.name} is {len(secret)} characters; HS256 needs at least {self.min_length}"
            )
        return secret


@dataclass(frozen=True, slots=True)
class Setting:
    """A row of the settings table: a field of ``Settings``, its variable and its default
    (``msgspec.NODEFAULT``: none, the setting is required)."""

    field: str
    variable: Variable[Any] | Secret
    default: Any

    @property
    def name(self) -> str:
        return self.variable.name

    @property
    def default_text(self) -> str:
        """The default as ``serve --help`` and the README's table word it."""
        if self.variable.default_text is not None:
            return self.variable.default_text
        if self.default is msgspec.NODEFAULT:
            return "required"
        return as_written(self.default)

    def read(self, env: Mapping[str, str], problems: list[str], *, terminal: bool) -> Any:
        """The field's value from ``env``; a bad one is added to ``problems``."""
        on_terminal = self.variable.on_terminal
        default = on_terminal if terminal and on_terminal is not None else self.default
        return self.variable.read(env, default, problems)


def as_written(value: object) -> str:
    """A default as it would be written in the environment: ``3000``, ``false``, ``*``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)
    return str(value)
