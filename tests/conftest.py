"""Shared test fixtures. Tests that read ../shared/assets skip with a reason when it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO.parent / "shared" / "assets"


@pytest.fixture(scope="session")
def assets() -> Path:
    if not ASSETS.is_dir():
        pytest.skip(f"shared test assets not found at {ASSETS} (CI has them; see README)")
    return ASSETS
