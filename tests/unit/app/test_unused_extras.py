"""The optional extras kept out of the gateway's processes (``app.UNUSED_EXTRAS``): refused to
the packages named for each, left alone for any other importer."""

from __future__ import annotations

import sys
import types
from importlib.machinery import ModuleSpec

import pytest

from kalami_gateway.app import UNUSED_EXTRAS, UnusedExtras


def _find(finder: UnusedExtras, name: str) -> ModuleSpec | None:
    return finder.find_spec(name)


def imported_by(importer: str, name: str) -> ModuleSpec | None:
    """What the finder answers when code of the module ``importer`` imports ``name``."""
    find = types.FunctionType(_find.__code__, {"__name__": importer})
    spec: ModuleSpec | None = find(UnusedExtras(), name)
    return spec


@pytest.mark.parametrize(
    ("name", "importer"),
    [(name, importer) for name, importers in UNUSED_EXTRAS.items() for importer in importers],
)
def test_each_extra_is_missing_for_the_packages_named_for_it(name: str, importer: str) -> None:
    with pytest.raises(ModuleNotFoundError) as raised:
        imported_by(f"{importer}.some_module", name)
    assert raised.value.name == name
    with pytest.raises(ModuleNotFoundError):
        imported_by(importer, name)  # the package's __init__ itself


@pytest.mark.parametrize("importer", ["tests.app", "__main__", "structlogger.dev", "uvicorns"])
def test_anyone_else_finds_it_as_usual(importer: str) -> None:
    assert imported_by(importer, "rich") is None
    assert imported_by(importer, "watchfiles") is None


def test_other_modules_are_not_its_business() -> None:
    assert imported_by("structlog.dev", "colorama") is None
    assert imported_by("redis.observability.providers", "opentelemetry.sdk.trace") is None


def test_it_is_installed_once() -> None:
    finders = [finder for finder in sys.meta_path if isinstance(finder, UnusedExtras)]
    assert len(finders) == 1
