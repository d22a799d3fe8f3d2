"""The settings table is the one list of settings: ``serve --help``, the README's configuration
table and ``.env.example`` name exactly its variables, with its defaults."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

import msgspec
import pytest

from kalami_gateway.app.cli import main
from kalami_gateway.app.settings import TABLE, Setting, Settings, load_settings
from kalami_gateway.app.settings.variable import as_written

ROOT: Final = Path(__file__).resolve().parents[3]
SECRET: Final = "s" * 32


def readme_defaults() -> dict[str, str]:
    """Each variable of the README's "## Configuration" table with its Default cell (without
    backticks); a row of two variables (``A`` / ``B``) has two defaults (``1`` / ``2``)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    defaults: dict[str, str] = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cells = line.removeprefix("| ").removesuffix(" |").split(" | ")
        names = re.findall(r"`([A-Z][A-Z0-9_]*)`", cells[0])
        shown = cells[-1].replace("`", "").split(" / ") if len(names) > 1 else [cells[-1]]
        assert len(shown) == len(names), line
        for name, default in zip(names, shown, strict=True):
            assert name not in defaults, f"{name} is in the README's table twice"
            defaults[name] = default.replace("`", "")
    return defaults


def env_example() -> dict[str, str]:
    """Each ``NAME=value`` line of .env.example, a commented-out one (``# NAME=``) too."""
    text = (ROOT / ".env.example").read_text(encoding="utf-8")
    lines = re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=(.*)$", text, flags=re.MULTILINE)
    values = dict(lines)
    assert len(values) == len(lines), "a variable is in .env.example twice"
    return values


def test_the_table_is_every_field_of_settings_in_order() -> None:
    assert [row.field for row in TABLE] == [f.name for f in msgspec.structs.fields(Settings)]
    assert len({row.name for row in TABLE}) == len(TABLE)


def test_serve_help_lists_every_variable_with_its_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["serve", "--help"])
    assert caught.value.code == 0
    listed = capsys.readouterr().out.split("environment variables:\n", 1)[1].splitlines()
    assert [line.split()[0] for line in listed] == [row.name for row in TABLE]
    for line, row in zip(listed, TABLE, strict=True):
        assert line.endswith(f"  {row.variable.help} (default: {row.default_text})")


def test_the_readme_table_lists_every_setting_with_its_default() -> None:
    assert readme_defaults() == {row.name: row.default_text for row in TABLE}


def test_env_example_lists_every_setting_at_its_default() -> None:
    values = env_example()
    assert set(values) == {row.name for row in TABLE}
    problems: list[str] = []
    for row in TABLE:
        read = row.read({row.name: values[row.name]}, problems, terminal=False)
        if row.default is not msgspec.NODEFAULT:
            assert read == row.default, row.name
    # The one required value is left empty: a copied .env.example does not start until it is
    # set (a placeholder that started would accept tokens signed with a published secret).
    assert len(problems) == 1
    assert "JWT_SECRET" in problems[0]


@pytest.mark.parametrize(
    "row",
    [row for row in TABLE if row.variable.default_text is None],
    ids=lambda row: str(row.name),
)
def test_a_default_shown_as_a_value_reads_back_as_itself(row: Setting) -> None:
    if row.default is msgspec.NODEFAULT:
        assert row.default_text == "required"
        return
    env = {"JWT_SECRET": SECRET, row.name: as_written(row.default)}
    loaded = load_settings(env, env_file=None, stdout_is_tty=False)
    assert getattr(loaded, row.field) == row.default
    assert as_written(row.default) == row.default_text
