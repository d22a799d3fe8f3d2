"""Settings: read once from the environment (and an optional ``.env`` file), then frozen.
``table`` is the settings table, written once: ``Settings``, each field with its variable's
name, parser and range, default and help line; the loader (``loading``), ``serve --help``
(``environment_help``) and the test of the README's table and ``.env.example`` all read it.
``parse`` holds the parsers, ``variable`` how one variable is read. Every bad value is
reported in one line that names the variable and says what is wrong.
"""

from kalami_gateway.app.settings.loading import (
    SettingsError,
    cluster_problems,
    load_settings,
    read_env_file,
)
from kalami_gateway.app.settings.table import (
    DEFAULT_LEEWAY_MS,
    ENVIRONMENT,
    JWT_SETUP_HINT,
    MIN_SECRET_LENGTH,
    TABLE,
    Settings,
    environment_help,
)
from kalami_gateway.app.settings.variable import Setting

__all__ = [
    "DEFAULT_LEEWAY_MS",
    "ENVIRONMENT",
    "JWT_SETUP_HINT",
    "MIN_SECRET_LENGTH",
    "TABLE",
    "Setting",
    "Settings",
    "SettingsError",
    "cluster_problems",
    "environment_help",
    "load_settings",
    "read_env_file",
]
