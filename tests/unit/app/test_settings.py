from __future__ import annotations

from pathlib import Path

import pytest

from kalami_gateway.app.settings import Settings, SettingsError, load_settings

SECRET = "s" * 32


def load(env: dict[str, str], env_file: Path | None = None) -> Settings:
    return load_settings(env, env_file=env_file, stdout_is_tty=False)


def test_defaults_match_the_design() -> None:
    settings = load({"JWT_SECRET": SECRET})
    assert settings.gateway_port == 3000
    assert settings.gateway_host == "0.0.0.0"  # noqa: S104
    assert settings.backend_url == "http://localhost:8000"
    assert settings.backend_mode == "http"
    assert settings.backend_timeout == 30.0
    assert settings.heartbeat_interval == 30.0
    assert settings.max_message_bytes == 3 << 20
    assert settings.max_audio_bytes == 10_485_760
    assert settings.ws_per_message_deflate is False
    assert settings.cors_origins == ("*",)
    assert settings.trusted_proxies == ()
    assert settings.log_level == "info"
    assert settings.log_format == "json"


def test_console_logs_by_default_on_a_terminal() -> None:
    assert (
        load_settings({"JWT_SECRET": SECRET}, env_file=None, stdout_is_tty=True).log_format
        == "console"
    )


class _Stream:
    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize(
    ("stdout", "stderr", "expected"), [(True, False, "console"), (False, True, "json")]
)
def test_the_terminal_that_counts_is_stdout_where_the_logs_go(
    monkeypatch: pytest.MonkeyPatch, stdout: bool, stderr: bool, expected: str
) -> None:
    # `serve > gateway.log` from a shell: stderr is still the terminal, the logs are not.
    monkeypatch.setattr("sys.stdout", _Stream(stdout))
    monkeypatch.setattr("sys.stderr", _Stream(stderr))
    assert load_settings({"JWT_SECRET": SECRET}, env_file=None).log_format == expected


def test_values_are_parsed() -> None:
    settings = load(
        {
            "JWT_SECRET": SECRET,
            "GATEWAY_PORT": "8080",
            "BACKEND_MODE": "STUB",
            "BACKEND_URL": "https://api.example.test/",
            "WS_PER_MESSAGE_DEFLATE": "true",
            "CORS_ORIGINS": "https://a.test, https://b.test",
            "TRUSTED_PROXIES": "10.0.0.1,10.0.0.2",
            "LOG_LEVEL": "warn",
        }
    )
    assert settings.gateway_port == 8080
    assert settings.backend_mode == "stub"
    assert settings.backend_url == "https://api.example.test"
    assert settings.ws_per_message_deflate is True
    assert settings.cors_origins == ("https://a.test", "https://b.test")
    assert settings.trusted_proxies == ("10.0.0.1", "10.0.0.2")
    assert settings.log_level == "warning"


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("GATEWAY_PORT", "abc", "GATEWAY_PORT: expected a whole number"),
        ("GATEWAY_PORT", "70000", "GATEWAY_PORT: expected a whole number from 0 to 65535"),
        ("BACKEND_MODE", "grpc", "BACKEND_MODE: expected one of http, stub"),
        ("BACKEND_TIMEOUT", "-5", "BACKEND_TIMEOUT: expected a whole number"),
        ("WS_HEARTBEAT_INTERVAL", "-1", "WS_HEARTBEAT_INTERVAL"),
        ("MAX_MESSAGE_BYTES", "lots", "MAX_MESSAGE_BYTES"),
        ("WS_PER_MESSAGE_DEFLATE", "maybe", "WS_PER_MESSAGE_DEFLATE: expected true or false"),
        ("LOG_LEVEL", "loud", "LOG_LEVEL"),
        ("LOG_FORMAT", "xml", "LOG_FORMAT"),
        ("BACKEND_URL", "localhost:8000", "BACKEND_URL: expected an http:// or https:// URL"),
        ("CORS_ORIGINS", "example.com", "CORS_ORIGINS"),
        ("RESUME_GRACE", "-1", "RESUME_GRACE: expected a whole number from 0 to 86400000"),
        ("PLAYGROUND", "sometimes", "PLAYGROUND: expected true or false"),
        ("UTTERANCE_UPLOAD", "chunked", "UTTERANCE_UPLOAD: expected one of stream, buffer"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(name: str, value: str, fragment: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load({"JWT_SECRET": SECRET, name: value})
    message = str(caught.value)
    assert fragment in message
    assert repr(value) in message
    assert "\n" not in message


def test_a_missing_secret_says_how_to_set_one() -> None:
    with pytest.raises(SettingsError, match=r"JWT_SECRET is not set.*export JWT_SECRET="):
        load({})


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(SettingsError, match="at least 32"):
        load({"JWT_SECRET": "short"})


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(SettingsError) as caught:
        load({"GATEWAY_PORT": "x", "BACKEND_MODE": "y"})
    assert all(n in str(caught.value) for n in ("JWT_SECRET", "GATEWAY_PORT", "BACKEND_MODE"))


def test_env_file_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "# comment\n"
        f"export JWT_SECRET='{SECRET}'\n"
        "GATEWAY_PORT=4000  # trailing comment\n"
        'BACKEND_MODE="stub"\n'
        "export\tLOG_LEVEL=debug\n"  # any blank after export, as a shell takes it
        "\n"
    )
    settings = load({"GATEWAY_PORT": "5000"}, env_file)
    assert settings.log_level == "debug"
    assert settings.jwt_secret == SECRET
    assert settings.gateway_port == 5000
    assert settings.backend_mode == "stub"


def test_a_malformed_env_file_line_is_named(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("JUST_A_WORD\n")
    with pytest.raises(SettingsError, match=r"\.env:1: expected KEY=VALUE"):
        load({}, env_file)


def test_cluster_settings() -> None:
    env = {"JWT_SECRET": "s" * 40, "REDIS_URL": "redis://cache:6379/2", "WORKERS": "4"}
    settings = load_settings(env, env_file=None)
    assert (settings.redis_url, settings.workers, settings.redis_key_prefix) == (
        "redis://cache:6379/2",
        4,
        "kalami:",
    )
    assert settings.max_connections_per_user == 20
    assert settings.push_api_key == ""


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("REDIS_URL", "http://cache:6379", "redis://"),
        ("REDIS_URL", "redis://cache:port/0", "port"),
        ("REDIS_URL", "redis://cache/zero", "database"),
        ("REDIS_KEY_PREFIX", "has space", "spaces"),
        ("MAX_CONNECTIONS_PER_USER", "-1", "whole number"),
        ("PUSH_API_KEY", "short", "16 characters"),
        ("WORKERS", "0", "whole number"),
    ],
)
def test_bad_cluster_settings_name_the_variable(name: str, value: str, words: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"JWT_SECRET": "s" * 40, name: value}, env_file=None)
    assert str(caught.value).startswith(name)
    assert words in str(caught.value)


def test_secrets_in_bad_values_are_not_repeated() -> None:
    env = {"JWT_SECRET": "s" * 40, "REDIS_URL": "redis://u:hunter2@h:x/0", "PUSH_API_KEY": "pw"}
    with pytest.raises(SettingsError) as caught:
        load_settings(env, env_file=None)
    assert "hunter2" not in str(caught.value)
    assert "'pw'" not in str(caught.value)


def test_workers_need_redis() -> None:
    with pytest.raises(SettingsError, match="WORKERS=2 needs REDIS_URL"):
        load_settings({"JWT_SECRET": "s" * 40, "WORKERS": "2"}, env_file=None)


def test_the_native_engine_refuses_permessage_deflate_at_load() -> None:
    env = {"JWT_SECRET": "s" * 40, "WS_ENGINE": "native", "WS_PER_MESSAGE_DEFLATE": "true"}
    with pytest.raises(SettingsError, match="WS_ENGINE=native does not support"):
        load_settings(env, env_file=None)
    env["WS_PER_MESSAGE_DEFLATE"] = "false"
    assert load_settings(env, env_file=None).ws_engine == "native"


def test_resume_grace_and_the_playground() -> None:
    defaults = load({"JWT_SECRET": SECRET})
    assert (defaults.resume_grace, defaults.playground_enabled) == (30.0, False)
    stub = load({"JWT_SECRET": SECRET, "BACKEND_MODE": "stub"})
    assert stub.playground_enabled  # on with the stub backend unless turned off
    off = load({"JWT_SECRET": SECRET, "BACKEND_MODE": "stub", "PLAYGROUND": "false"})
    assert not off.playground_enabled
    on = load({"JWT_SECRET": SECRET, "PLAYGROUND": "yes", "RESUME_GRACE": "0"})
    assert (on.playground_enabled, on.resume_grace) == (True, 0.0)


def test_utterances_are_streamed_unless_buffering_is_asked_for() -> None:
    assert load({"JWT_SECRET": SECRET}).utterance_upload == "stream"
    buffered = load({"JWT_SECRET": SECRET, "UTTERANCE_UPLOAD": "BUFFER"})
    assert buffered.utterance_upload == "buffer"


def test_api_budgets() -> None:
    defaults = load({"JWT_SECRET": SECRET})
    assert defaults.api_connections_per_client == 128  # above the bench's 64 (wrk -c64)
    assert (defaults.api_body_min_rate, defaults.api_body_rate_grace) == (1024, 10.0)
    set_ = load(
        {
            "JWT_SECRET": SECRET,
            "API_CONNECTIONS_PER_CLIENT": "0",
            "API_BODY_MIN_RATE": "0",
            "API_BODY_RATE_GRACE": "2500",
        }
    )
    assert set_.api_connections_per_client == 0  # no cap
    assert (set_.api_body_min_rate, set_.api_body_rate_grace) == (0, 2.5)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("API_CONNECTIONS_PER_CLIENT", "-1"),
        ("API_CONNECTIONS_PER_CLIENT", "many"),
        ("API_BODY_MIN_RATE", "1KiB"),
        ("API_BODY_MIN_RATE", "-5"),
        ("API_BODY_RATE_GRACE", "3600001"),
        ("API_BODY_RATE_GRACE", "999"),
    ],
)
def test_bad_api_budgets_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load({"JWT_SECRET": SECRET, name: value})
    assert str(caught.value).startswith(f"{name}: expected a whole number")
    assert repr(value) in str(caught.value)
