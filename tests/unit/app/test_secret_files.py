"""Secrets from files: NAME_FILE=<path> instead of NAME, read once at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from kalami_gateway.app.settings import SettingsError, load_settings

SECRET = "s" * 32


def load(env: dict[str, str]) -> object:
    return load_settings(env, env_file=None)


def test_each_secret_can_come_from_a_file(tmp_path: Path) -> None:
    files = {
        "JWT_SECRET": "j" * 40 + "\n",  # as `echo` leaves it
        "JWT_PREVIOUS_SECRET": "p" * 32,
        "PUSH_API_KEY": "k" * 20 + "\r\n",
        "REDIS_URL": "redis://:pw@127.0.0.1:6379/0\n",
    }
    env = {}
    for name, text in files.items():
        path = tmp_path / name.lower()
        path.write_text(text, encoding="utf-8")
        env[f"{name}_FILE"] = str(path)
    settings = load_settings(env, env_file=None)
    assert settings.jwt_secret == "j" * 40
    assert settings.jwt_previous_secret == "p" * 32
    assert settings.push_api_key == "k" * 20
    assert settings.redis_url == "redis://:pw@127.0.0.1:6379/0"


def test_only_one_trailing_newline_is_taken_off(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(" " + "x" * 32 + " \n\n", encoding="utf-8")
    settings = load_settings({"JWT_SECRET_FILE": str(path)}, env_file=None)
    assert settings.jwt_secret == " " + "x" * 32 + " \n"


def test_a_name_and_its_file_together_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("k" * 20, encoding="utf-8")
    with pytest.raises(SettingsError, match="PUSH_API_KEY and PUSH_API_KEY_FILE are both set"):
        load({"JWT_SECRET": SECRET, "PUSH_API_KEY": "k" * 20, "PUSH_API_KEY_FILE": str(path)})


def test_an_unreadable_file_is_named_and_the_secret_never_repeated(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(SettingsError) as caught:
        load({"JWT_SECRET_FILE": str(missing)})
    message = str(caught.value)
    assert f"JWT_SECRET_FILE: cannot read {missing}: No such file or directory" in message


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(SettingsError, match=f"PUSH_API_KEY_FILE: {path} is empty"):
        load({"JWT_SECRET": SECRET, "PUSH_API_KEY_FILE": str(path)})
    with pytest.raises(SettingsError, match="JWT_SECRET is not set"):
        load({"JWT_SECRET_FILE": str(path)})


def test_a_secret_from_a_file_is_checked_like_one_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "short"
    path.write_text("short-secret", encoding="utf-8")
    with pytest.raises(SettingsError) as caught:
        load({"JWT_SECRET_FILE": str(path)})
    assert "JWT_SECRET is 12 characters" in str(caught.value)
    assert "short-secret" not in str(caught.value)
    with pytest.raises(SettingsError, match="JWT_PREVIOUS_SECRET: expected at least 32"):
        load({"JWT_SECRET": SECRET, "JWT_PREVIOUS_SECRET_FILE": str(path)})


def test_other_settings_have_no_file_form(tmp_path: Path) -> None:
    path = tmp_path / "port"
    path.write_text("4000", encoding="utf-8")
    settings = load_settings({"JWT_SECRET": SECRET, "GATEWAY_PORT_FILE": str(path)}, None)
    assert settings.gateway_port == 3000


def test_a_previous_push_key_needs_a_current_one() -> None:
    with pytest.raises(SettingsError, match="PUSH_PREVIOUS_API_KEY needs PUSH_API_KEY"):
        load({"JWT_SECRET": SECRET, "PUSH_PREVIOUS_API_KEY": "k" * 20})
