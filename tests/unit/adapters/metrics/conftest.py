from __future__ import annotations

from pathlib import Path

import pytest

from kalami_gateway.adapters.metrics import MULTIPROCESS_ENV


@pytest.fixture
def shared_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The directory a group's workers share (as their supervisor names it to them)."""
    monkeypatch.setenv(MULTIPROCESS_ENV, str(tmp_path))
    return str(tmp_path)
